# Input functions of the collapse atlas (config/atlas.yaml), included by the Snakefile only
# when the config has an `atlas` grid, so that the core workflow never imports the atlas.
import json
import re

from scvae.atlas.grid import atlas_jobs
from scvae.training.settings import default_settings

ATLAS = config["atlas"]
# Jobs of trainings, see scvae.atlas.grid.atlas_jobs.
ATLAS_JOBS = atlas_jobs(config)


wildcard_constraints:
    atlas_dataset="|".join(map(re.escape, ATLAS["datasets"])),
    atlas_job="|".join(map(re.escape, ATLAS_JOBS)),


def atlas_inputs(wildcards):
    atlas = ATLAS
    return [
        f"results/atlas/runs/{dataset}/{job}.json"
        for dataset in atlas["datasets"]
        for job in ATLAS_JOBS
    ]


def atlas_dataset_input(wildcards):
    return ATLAS["datasets"][wildcards.atlas_dataset]["path"]


def atlas_dataset_options(wildcards):
    ds = ATLAS["datasets"][wildcards.atlas_dataset]
    opts = []
    if ds.get("format"):
        opts += ["--format", ds["format"]]
    if ds.get("label_key"):
        opts += ["--label-key", ds["label_key"]]
    return " ".join(opts)


def atlas_job_json(wildcards):
    return json.dumps({"runs": ATLAS_JOBS[wildcards.atlas_job]})


def atlas_run_params(wildcards):
    atlas = ATLAS
    return json.dumps(
        {
            "n_cells": atlas["n_cells"],
            "resolution": atlas["resolution"],
            "n_neighbors": config["cluster"]["n_neighbors"],
            "kmeans_fits": config["cluster"]["kmeans_fits"],
            "diagnostics": atlas.get("diagnostics", {}),
        }
    )


def atlas_job_runtime(wildcards, attempt):
    """Minutes: about 2 s per epoch-thousand-cells of each training, plus start-up."""
    runs = ATLAS_JOBS[wildcards.atlas_job]
    cells = ATLAS["n_cells"] or 10000
    # A run's settings override the package defaults (scvae.train fills in the rest).
    settings = [{**default_settings(), **r["settings"]} for r in runs]
    seconds = sum(
        2e-3 * s["max_epochs"] * cells * (1 + s["aggressive_epochs"] / 5) for s in settings
    )
    return int((10 + seconds / 60) * attempt)
