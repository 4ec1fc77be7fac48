"""The workflow's map rule end to end: Kang control as the reference, stimulated as query."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_map_rule_maps_stimulated_cells_onto_the_control_run(tmp_path, shared_data):
    kang = ad.read_h5ad(shared_data / "kang_ifnb_2conditions_counts.h5ad")
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for condition, n in (("control", 400), ("stimulated", 200)):
        cells = np.flatnonzero(kang.obs["condition"] == condition)
        part = kang[np.sort(rng.choice(cells, n, replace=False))].copy()
        part.write_h5ad(tmp_path / "data" / f"{condition}.h5ad")
    config = {
        "datasets": {
            "kang_ctrl": {
                "path": "data/control.h5ad",
                "label_key": "cell_type",
                "batch_key": "condition",
            }
        },
        "defaults": {"n_latent": 6, "n_hidden": 32, "max_epochs": 5, "device": "cpu"},
        "variants": {"recommended": {"encode_covariates": True}},
        "run_variants": ["recommended"],
        "seeds": [0],
        "baselines": {"pca": [6], "scvi": False, "harmony": False},
        "query": {
            "kang_stim": {
                "path": "data/stimulated.h5ad",
                "reference": "kang_ctrl",
                "label_key": "cell_type",
                "batch_key": "condition",
                "epochs": 5,
            }
        },
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/kang_ctrl/recommended/seed0/map/kang_stim/map.json"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--cores", "2", target],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "results" / "kang_ctrl" / "recommended" / "seed0" / "map" / "kang_stim"
    record = json.loads((run / "map.json").read_text())
    assert record["new_categories"] == {"batch": ["stimulated"]}
    assert record["n_genes_missing"] == 0 and record["accuracy"] > 0.3
    query = ad.read_h5ad(run / "query.h5ad")
    assert query.n_obs == 200 and query.obsm["X_scvae"].shape == (200, 6)
    assert (run / "figures" / "map_umap.png").stat().st_size > 0
