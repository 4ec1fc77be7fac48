import copy
import importlib.util
import json
import re
import shlex
import sys

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from scvae.workflow import preprocess_settings, resolve_variant


# validate() fills in the schema's defaults everywhere a settings object appears, variants
# included; a variant must keep only the keys the user set, since it overrides `defaults`.
_variant_overrides = copy.deepcopy(config.get("variants"))
validate(config, schema="../../config/config.schema.yaml")
config["variants"] = {k: v or {} for k, v in _variant_overrides.items()}

# The command every rule runs: the Python that runs Snakemake (a venv with scvae
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
SCVI_AVAILABLE = importlib.util.find_spec("scvi") is not None
BASELINES = [f"pca{n}" for n in config["baselines"]["pca"]]
if config["baselines"]["scvi"] and SCVI_AVAILABLE:
    BASELINES.append("scvi")


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    variant="|".join(map(re.escape, VARIANTS)),
    baseline=r"pca\d+|scvi",
    seed=r"\d+",
    name="|".join(map(re.escape, VARIANTS)) + r"|pca\d+|scvi",


def all_targets():
    targets = []
    for dataset in config["datasets"]:
        targets.append(f"results/{dataset}/comparison.tsv")
    return targets


def dataset_input(wildcards):
    return config["datasets"][wildcards.dataset]["path"]


def dataset_options(wildcards):
    ds = config["datasets"][wildcards.dataset]
    opts = []
    if ds.get("format"):
        opts += ["--format", ds["format"]]
    if ds.get("label_key"):
        opts += ["--label-key", ds["label_key"]]
    if ds.get("layer"):
        opts += ["--layer", ds["layer"]]
    if ds.get("transpose"):
        opts.append("--transpose")
    return " ".join(opts)


def preprocess_json(wildcards):
    return json.dumps(preprocess_settings(config))


def variant_settings(wildcards):
    return resolve_variant(config, wildcards.variant, int(wildcards.seed))


def variant_json(wildcards):
    return json.dumps(variant_settings(wildcards))


def wants_gpu(wildcards):
    device = variant_settings(wildcards).get("device", "auto")
    return 1 if device.startswith("cuda") else 0


def mem_mb_from_input(factor, floor):
    """Memory estimate in MB: ``floor`` plus ``factor`` times the input's size."""

    def estimate(wildcards, input):
        return int(floor + factor * input.size_mb)

    return estimate


def diagnostics_json(wildcards):
    return json.dumps(config["diagnostics"])


def cluster_json(wildcards):
    return json.dumps(config["cluster"])


def run_names(dataset):
    return [
        f"results/{dataset}/{name}/seed{seed}"
        for name in config["run_variants"] + BASELINES
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
    if config["baselines"]["scvi"] and not SCVI_AVAILABLE:
        notes.append("scvi baseline skipped: scvi-tools is not installed (pip install -e '.[scvi]')")
    return " ".join(f"--note {json.dumps(n)}" for n in notes)


def cluster_diagnostics(wildcards):
    if wildcards.name in VARIANTS:
        return f"results/{wildcards.dataset}/{wildcards.name}/seed{wildcards.seed}/diagnostics.json"
    return []
