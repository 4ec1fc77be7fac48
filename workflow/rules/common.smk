import copy
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from scvae.baseline_names import (
    BASELINE_PATTERN,
    baseline_arguments,
    baseline_minutes,
    dataset_baselines,
    dataset_has_batches,
)
from scvae.config import preprocess_settings, resolve_variant
from scvae.data.ondisk import backed_min_bytes


# validate() fills in the schema's defaults everywhere a settings object appears, variants
# included; a variant must keep only the keys the user set, since it overrides `defaults`.
_variant_overrides = copy.deepcopy(config.get("variants"))
_batch_overrides = copy.deepcopy(config.get("with_batches") or {})
validate(config, schema="../../config/config.schema.yaml")
config["variants"] = {k: v or {} for k, v in _variant_overrides.items()}
config["with_batches"] = {k: v or {} for k, v in _batch_overrides.items()}

# The command of every rule is the Python that runs Snakemake (a venv with scvae
# installed), or, with `--sdm conda`, the env's Python importing the package from this
# repository through PYTHONPATH (the env holds the dependencies only).
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    SCVAE = f"PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}} python -m scvae.cli"
else:
    SCVAE = f"{shlex.quote(sys.executable)} -m scvae.cli"

VARIANTS = list(config["variants"])
for _v in config["run_variants"]:
    if _v not in config["variants"]:
        raise ValueError(
            f"config: run_variants names {_v!r}, which is not defined in variants ({VARIANTS})"
        )
for _v in config["with_batches"]:
    if _v not in config["variants"]:
        raise ValueError(
            f"config: with_batches names {_v!r}, which is not defined in variants ({VARIANTS})"
        )
SCVI_AVAILABLE = importlib.util.find_spec("scvi") is not None
SCVI_WANTED = bool(config["baselines"]["scvi"] or config["baselines"]["scvi_epochs"])
# Baseline runs of each dataset (scvae.baseline_names): Harmony only where the dataset
# has batches (batch_key or samples), scVI only where scvi-tools is installed.
BASELINES = {
    name: dataset_baselines(
        config["baselines"],
        has_batches=dataset_has_batches(ds),
        scvi_available=SCVI_AVAILABLE,
    )
    for name, ds in config["datasets"].items()
}


# The collapse atlas (config/atlas.yaml): jobs of trainings, see scvae.atlas.grid.atlas_jobs.
# The atlas code is imported only when an atlas grid is configured.
ATLAS = config.get("atlas")
if ATLAS:
    from scvae.atlas.grid import atlas_jobs

    ATLAS_JOBS = atlas_jobs(config)
else:
    ATLAS_JOBS = {}


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    variant="|".join(map(re.escape, VARIANTS)),
    baseline=BASELINE_PATTERN,
    seed=r"\d+",
    name="|".join([*map(re.escape, VARIANTS), BASELINE_PATTERN]),


# Query datasets mapped onto a trained run (workflow/rules/map.smk, included with `query:`).
QUERIES = config["query"]
for _name, _q in QUERIES.items():
    if _q["reference"] not in config["datasets"]:
        raise ValueError(
            f"config: query {_name!r} names reference {_q['reference']!r}, which is not in "
            f"datasets ({list(config['datasets'])})"
        )
    if _q["variant"] not in config["variants"]:
        raise ValueError(
            f"config: query {_name!r} names variant {_q['variant']!r}, which is not defined "
            f"in variants ({VARIANTS})"
        )


def query_dir(name):
    """The folder of a query's mapping: under the run it is mapped onto."""
    q = QUERIES[name]
    return f"results/{q['reference']}/{q['variant']}/seed{q['seed']}/map/{name}"


def all_targets():
    targets = []
    for dataset in config["datasets"]:
        targets.append(f"results/{dataset}/comparison.tsv")
    targets += [f"{query_dir(name)}/map.json" for name in QUERIES]
    return targets


def query_input(wildcards):
    return QUERIES[wildcards.query]["path"]


def query_options(wildcards):
    """The query's reading options and batch column, quoted."""
    q = QUERIES[wildcards.query]
    opts = []
    for key in ("format", "layer", "label_key", "batch_key"):
        if q.get(key):
            opts += [f"--{key.replace('_', '-')}", q[key]]
    if q.get("transpose"):
        opts.append("--transpose")
    return shlex.join(opts)


def query_json(wildcards):
    q = QUERIES[wildcards.query]
    return json.dumps({"n_neighbors": q["n_neighbors"], "epochs": q["epochs"], "seed": q["seed"]})


def dataset_files(dataset):
    """The input files of a dataset: its path, or every sample's file (in order)."""
    ds = config["datasets"][dataset]
    return list(ds["samples"].values()) if ds.get("samples") else [ds["path"]]


def dataset_input(wildcards):
    # Every sample's file, so that Snakemake reruns the preprocessing when one changes.
    return dataset_files(wildcards.dataset)


def dataset_options(wildcards):
    """The input (--input, or --samples NAME=PATH ...) and the reading options, quoted."""
    ds = config["datasets"][wildcards.dataset]
    if ds.get("samples"):
        opts = ["--samples", *(f"{name}={path}" for name, path in ds["samples"].items())]
    else:
        opts = ["--input", ds["path"]]
    if ds.get("format"):
        opts += ["--format", ds["format"]]
    if ds.get("label_key"):
        opts += ["--label-key", ds["label_key"]]
    if ds.get("layer"):
        opts += ["--layer", ds["layer"]]
    if ds.get("transpose"):
        opts.append("--transpose")
    if ds.get("batch_key"):
        opts += ["--batch-key", ds["batch_key"]]
    if ds.get("covariates"):
        opts += ["--covariates", *ds["covariates"]]
    return shlex.join(opts)


def preprocess_json(wildcards):
    return json.dumps(preprocess_settings(config))


def variant_settings(wildcards):
    return resolve_variant(
        config,
        wildcards.variant,
        int(wildcards.seed),
        batches=dataset_has_batches(config["datasets"][wildcards.dataset]),
    )


def variant_json(wildcards):
    return json.dumps(variant_settings(wildcards))


# --- Resources -----------------------------------------------------------------------
# mem_mb (MB) and runtime (minutes) of every job, for cluster schedulers (sbatch --mem,
# --time) and for `--resources mem_mb=...` on one machine. Measured peaks (/usr/bin/time,
# 300, 4,271 and 42,710 cells x 2,000 genes): about 600 MB for Python and the libraries
# plus 1.5-2.5 times the input .h5ad (cluster: 5 times; preprocess: 18 times its gzip-
# compressed input); training at 1.9e-9 s per cell x gene x hidden unit and epoch on one
# core; cluster (kNN, Leiden, UMAP) at 4e-3 s per cell. With the counts on disk (inputs
# of at least 1 GiB) memory follows the cells, not the counts: at 10^6 cells x 2,000 genes
# (1.9 GB of counts) preprocess, train, PCA and diagnose peaked at 1.1-1.5 GB and cluster
# at a few GB (benchmarks/README.md, the whole workflow). The estimates below leave 2-4
# times headroom and grow with each retry (`attempt`), so a job killed for memory or time
# comes back with more.

# Datasets whose input is smaller than this (MB) are "small": the post-training jobs of
# each of their runs are grouped (see small_job_group).
SMALL_DATASET_MB = 200


def gpu_request(wildcards):
    """1 GPU for a run whose device is cuda; None (no GPU resource at all) otherwise."""
    device = variant_settings(wildcards)["device"]
    return 1 if device.startswith("cuda") else None


def h5ad_dims(path):
    """(cells, genes) of an .h5ad read from its header; None if it cannot be read."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            # From the indexes: run files (latent.h5ad) have no X.
            n = [len(f[k][f[k].attrs.get("_index", "_index")]) for k in ("obs", "var")]
            return n[0], n[1]
    except Exception:  # not written yet (dry run) or not an .h5ad: callers fall back
        return None


def _dims(path, size_mb):
    # Fallback before the file exists: about 16 bytes per stored count, 10% non-zero.
    return h5ad_dims(path) or (max(1000, int(size_mb * 1e6 / 16 / 200)), 2000)


def _on_disk(paths):
    """Whether a job reads its counts backed: an input h5ad of at least backed_min_bytes."""
    try:
        return any(
            str(p).endswith(".h5ad") and Path(p).stat().st_size >= backed_min_bytes() for p in paths
        )
    except OSError:  # not written yet (dry run)
        return False


def mem_mb_from_input(factor, floor, on_disk_factor=None):
    """Memory estimate in MB: ``floor`` plus ``factor`` times the input's size, per attempt.

    ``on_disk_factor`` replaces ``factor`` when the counts stay on disk (a large input
    h5ad): then memory follows the cells and the minibatches, not the counts.
    """

    def estimate(wildcards, input, attempt):
        f = factor if on_disk_factor is None or not _on_disk(input) else on_disk_factor
        return int((floor + f * input.size_mb) * attempt)

    return estimate


def runtime_from_input(minutes, per_gb):
    """Run time in minutes: ``minutes`` plus ``per_gb`` per GB of input, per attempt."""

    def estimate(wildcards, input, attempt):
        return int((minutes + per_gb * input.size_mb / 1024) * attempt)

    return estimate


def train_runtime(wildcards, input, threads, attempt):
    """Minutes for max_epochs over the cells (without early stopping), per attempt."""
    s = variant_settings(wildcards)
    cells, genes = _dims(input[0], input.size_mb)
    width = max(s["n_hidden"], s["decoder_hidden"])
    width *= max(1, s["n_layers"], s["decoder_layers"])
    seconds = 8e-9 * s["max_epochs"] * cells * genes * width / threads**0.5
    if gpu_request(wildcards):
        seconds /= 5
    return int((15 + seconds / 60) * attempt)


def diagnose_runtime(wildcards, input, threads, attempt):
    """Minutes for the IWAE bound (k_iwae samples per cell) and the rest, per attempt."""
    s = variant_settings(wildcards)
    cells, genes = _dims(input.latent, input.size_mb)
    width = max(s["n_hidden"], s["decoder_hidden"])
    seconds = 2e-10 * cells * config["diagnostics"]["k_iwae"] * genes * width / threads**0.5
    return int((15 + seconds / 60) * attempt)


def cluster_runtime(wildcards, input, attempt):
    """Minutes for the kNN graph, Leiden at each resolution and UMAP, per attempt."""
    cells, _ = _dims(input.latent, input.size_mb)
    seconds = 1e-2 * cells * (1 + 0.2 * len(config["cluster"]["resolutions"]))
    return int((15 + seconds / 60) * attempt)


def small_job_group(wildcards):
    """Group of the diagnose, baseline and cluster jobs of a small dataset's run.

    One SLURM job then runs the post-training steps of a run instead of one job each
    (and `group-components: postprocess=N` of the profile packs N runs into one). Large
    datasets' jobs are not grouped: each gets its own resources. Groups only apply to
    cluster execution; a local run ignores them.
    """
    files = []
    try:
        # A dataset of several samples is sized by all its files together.
        for path in map(Path, dataset_files(wildcards.dataset)):
            files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        size_mb = sum(p.stat().st_size for p in files) / 1e6
    except OSError:
        return None
    return "postprocess" if size_mb < SMALL_DATASET_MB else None


def diagnostics_json(wildcards):
    return json.dumps(config["diagnostics"])


def cluster_json(wildcards):
    return json.dumps(config["cluster"])


def run_names(dataset):
    return [
        f"results/{dataset}/{name}/seed{seed}"
        for name in config["run_variants"] + BASELINES[dataset]
        for seed in config["seeds"]
    ]


def compare_inputs(wildcards):
    dirs = run_names(wildcards.dataset)
    return {
        "metrics": [f"{d}/metrics.json" for d in dirs],
        "final": [f"{d}/final.h5ad" for d in dirs],
    }


def compare_notes(wildcards):
    notes = []
    if SCVI_WANTED and not SCVI_AVAILABLE:
        notes.append("scvi baselines skipped: scvi-tools is not installed (pip install -e '.[scvi]')")
    return " ".join(f"--note {json.dumps(n)}" for n in notes)


def cluster_diagnostics(wildcards):
    if wildcards.name in VARIANTS:
        return f"results/{wildcards.dataset}/{wildcards.name}/seed{wildcards.seed}/diagnostics.json"
    return []


def cluster_model(wildcards):
    """The model of a VAE run (its decoded expression goes into final.h5ad); none for baselines."""
    if wildcards.name in VARIANTS:
        return f"results/{wildcards.dataset}/{wildcards.name}/seed{wildcards.seed}/model.pt"
    return []
