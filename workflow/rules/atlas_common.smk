# Input functions of the collapse atlas (config/atlas.yaml), included by the Snakefile only
# when the config has an `atlas` grid, so that the core workflow never imports the atlas.
import json
import re

from scvae.atlas.grid import ATLAS_DEFAULTS, atlas_jobs
from scvae.config import fill_defaults, reader_options
from scvae.resources import trainings_minutes
from scvae.training.settings import default_settings

# The atlas keys left out take the grid's defaults (scvae.atlas.grid.ATLAS_DEFAULTS).
config.update(fill_defaults(config, ATLAS_DEFAULTS))
ATLAS = config["atlas"]
# Jobs of trainings (scvae.atlas.grid.atlas_jobs), each run with its complete settings
# (the package defaults under the config's `defaults`), as its record keeps them.
ATLAS_JOBS = atlas_jobs({**config, "defaults": {**default_settings(), **config["defaults"]}})


wildcard_constraints:
    atlas_dataset="|".join(map(re.escape, ATLAS["datasets"])),
    atlas_job="|".join(map(re.escape, ATLAS_JOBS)),


def atlas_inputs(wildcards):
    return [
        f"results/atlas/runs/{dataset}/{job}.json"
        for dataset in ATLAS["datasets"]
        for job in ATLAS_JOBS
    ]


def atlas_dataset_input(wildcards):
    return ATLAS["datasets"][wildcards.atlas_dataset]["path"]


def atlas_dataset_options(wildcards):
    return reader_options(ATLAS["datasets"][wildcards.atlas_dataset])


def atlas_job_json(wildcards):
    return json.dumps({"runs": ATLAS_JOBS[wildcards.atlas_job]})


def atlas_run_params(wildcards):
    return json.dumps(
        {
            "n_cells": ATLAS["n_cells"],
            "resolution": ATLAS["resolution"],
            "n_neighbors": config["cluster"]["n_neighbors"],
            "kmeans_fits": config["cluster"]["kmeans_fits"],
            "diagnostics": ATLAS["diagnostics"],
        }
    )


def atlas_job_runtime(wildcards, attempt):
    settings = [run["settings"] for run in ATLAS_JOBS[wildcards.atlas_job]]
    return trainings_minutes(settings, ATLAS["n_cells"], attempt=attempt)
