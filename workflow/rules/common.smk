import importlib.util
import json
import re
import shlex
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from scvae.workflow_runs import (
    BASELINE_PATTERN,
    baseline_arguments,
    baseline_minutes,
    dataset_baselines,
    dataset_has_batches,
)
from scvae.config import (
    config_with_defaults,
    preprocess_settings,
    reader_options,
    resolve_variant,
    variant_names,
)
from scvae.resources import (
    cluster_minutes,
    diagnose_minutes,
    gpu_count,
    input_dims,
    mem_mb,
    postprocess_group,
    reads_on_disk,
    runtime_minutes,
    train_minutes,
)


# The schema checks names, types and ranges and states no defaults; each key left out
# takes the package's (scvae.config.config_with_defaults: the signature of the function
# that receives it). The model and training settings are completed per run
# (scvae.config.resolve_variant), so `defaults` and the variants keep what the user set.
validate(config, schema="../../config/config.schema.yaml", set_default=False)
config.update(config_with_defaults(config))

# The command of every rule is the Python that runs Snakemake (a venv with scvae
# installed), or, with `--sdm conda`, the env's Python importing the package from this
# repository through PYTHONPATH (the env holds the dependencies only).
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    SCVAE = f"PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}} python -m scvae.cli"
else:
    SCVAE = f"{shlex.quote(sys.executable)} -m scvae.cli"

# The package's presets and the config's own variants (scvae.config.variant_names).
VARIANTS = variant_names(config)
for _key in ("run_variants", "with_batches"):
    for _v in config[_key]:
        if _v not in VARIANTS:
            raise ValueError(
                f"config: {_key} names {_v!r}, which is neither a preset nor defined in "
                f"variants ({VARIANTS})"
            )
SCVI_AVAILABLE = importlib.util.find_spec("scvi") is not None
SCVI_WANTED = bool(config["baselines"]["scvi"] or config["baselines"]["scvi_epochs"])
# Baseline runs of each dataset (scvae.workflow_runs): Harmony only where the dataset
# has batches (batch_key or samples), scVI only where scvi-tools is installed.
BASELINES = {
    name: dataset_baselines(
        config["baselines"],
        has_batches=dataset_has_batches(ds),
        scvi_available=SCVI_AVAILABLE,
    )
    for name, ds in config["datasets"].items()
}


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
    if _q["variant"] not in VARIANTS:
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
    return reader_options(QUERIES[wildcards.query])


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
    """The input (its path, or every sample's file) and the reading options, quoted."""
    return reader_options(config["datasets"][wildcards.dataset], with_input=True)


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


# --- Resources ----------------------------------------------------------------------
# mem_mb (MB) and runtime (minutes) of each job, for cluster schedulers and for
# `--resources mem_mb=...` on one machine: scvae.resources estimates them from the size
# of the job's input, growing with each retry (`attempt`).


def mem_mb_from_input(factor, floor, on_disk_factor=None):
    """mem_mb: ``floor`` plus ``factor`` (``on_disk_factor`` when read backed) MB per MB."""
    shares = {"factor": factor, "floor": floor, "on_disk_factor": on_disk_factor}

    def estimate(wildcards, input, attempt):
        return mem_mb(input.size_mb, attempt=attempt, on_disk=reads_on_disk(input), **shares)

    return estimate


def runtime_from_input(minutes, per_gb):
    """runtime: ``minutes`` plus ``per_gb`` minutes per GB of input."""

    def estimate(wildcards, input, attempt):
        return runtime_minutes(input.size_mb, minutes=minutes, per_gb=per_gb, attempt=attempt)

    return estimate


def gpu_request(wildcards):
    """1 GPU for a run whose device is cuda; None (no GPU resource at all) otherwise."""
    return gpu_count(variant_settings(wildcards)["device"])


def train_runtime(wildcards, input, threads, attempt):
    cells, genes = input_dims(input[0], input.size_mb)
    gpu = gpu_request(wildcards) is not None
    settings = variant_settings(wildcards)
    return train_minutes(settings, cells, genes, threads=threads, gpu=gpu, attempt=attempt)


def diagnose_runtime(wildcards, input, threads, attempt):
    cells, genes = input_dims(input.latent, input.size_mb)
    k_iwae = config["diagnostics"]["k_iwae"]
    settings = variant_settings(wildcards)
    return diagnose_minutes(settings, cells, genes, k_iwae=k_iwae, threads=threads, attempt=attempt)


def cluster_runtime(wildcards, input, attempt):
    cells, _ = input_dims(input.latent, input.size_mb)
    n_resolutions = len(config["cluster"]["resolutions"])
    return cluster_minutes(cells, n_resolutions=n_resolutions, attempt=attempt)


def baseline_runtime(wildcards, input, threads, attempt):
    # scVI trains for up to 400 epochs: its jobs get a training's estimate.
    cells, genes = input_dims(input[0], input.size_mb)
    size_mb = input.size_mb
    minutes = baseline_minutes(wildcards.baseline, cells, genes, input_mb=size_mb, threads=threads)
    return attempt * minutes


def small_job_group(wildcards):
    """The group of a small dataset's diagnose, baseline and cluster jobs (or None)."""
    return postprocess_group(dataset_files(wildcards.dataset))


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
    """The model of a VAE run (its decoded expression, with cluster: decoded); none for baselines."""
    if wildcards.name in VARIANTS:
        return f"results/{wildcards.dataset}/{wildcards.name}/seed{wildcards.seed}/model.pt"
    return []
