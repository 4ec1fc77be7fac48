"""The Snakemake workflow end to end on the `.test` config (300 real PBMC cells)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def test_run(tmp_path_factory) -> Path:
    """Run the `.test` workflow once, in a copy so the repository stays clean."""
    workdir = tmp_path_factory.mktemp("wf")
    shutil.copytree(ROOT / ".test" / "config", workdir / "config")
    shutil.copytree(ROOT / ".test" / "data", workdir / "data")
    proc = _snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def test_workflow_writes_the_comparison_and_final_files(test_run):
    results = test_run / "results" / "pbmc300"
    table = pd.read_csv(results / "comparison.tsv", sep="\t")
    assert set(table["variant"]) == {"recommended", "vanilla", "pca6"}
    vae = table[table["kind"] == "vae"]
    assert vae["verdict"].isin(["healthy", "partial collapse", "collapsed"]).all()
    assert (vae["active_units"] >= 0).all() and vae["mi"].notna().all()
    assert table["kmeans_ari"].notna().all()
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    assert "rank" in summary.columns
    for name in ["kl_heatmap", "mi_au", "scores", "umap_grid", "training_curves"]:
        assert (results / "figures" / f"{name}.png").stat().st_size > 0

    final = anndata.read_h5ad(results / "recommended" / "seed0" / "final.h5ad")
    counts = final.layers["counts"]
    assert np.array_equal(counts.data, np.round(counts.data))
    assert final.obsm["X_scvae"].shape == (final.n_obs, 6)
    assert final.obsm["X_umap"].shape == (final.n_obs, 2)
    assert final.obs["scvae_leiden"].dtype == "category"
    assert "label" in final.obs
    scvae_uns = final.uns["scvae"]
    assert scvae_uns["diagnostics"]["verdict"] in {"healthy", "partial collapse", "collapsed"}
    assert {"preprocess", "train", "cluster"} <= set(scvae_uns)
    diag = json.loads((results / "recommended" / "seed0" / "diagnostics.json").read_text())
    assert {"verdict", "verdict_reason", "mi", "active_units", "kl_per_dim", "validation"} <= set(
        diag
    )
    history = pd.read_csv(results / "recommended" / "seed0" / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, 9))


def test_preprocessed_file_opens_with_scanpy(test_run):
    import scanpy as sc

    adata = sc.read_h5ad(test_run / "results" / "pbmc300" / "preprocessed.h5ad")
    assert adata.n_obs > 280  # the default filters keep (almost) every cell
    assert adata.layers["counts"].dtype.kind in "fi"


def test_report_is_generated(test_run):
    proc = _snakemake(test_run, "--report", "results/report.html")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (test_run / "results" / "report.html").stat().st_size > 10_000


def test_bad_input_error_reaches_the_console(tmp_path):
    workdir = tmp_path
    shutil.copytree(ROOT / ".test" / "config", workdir / "config")
    (workdir / "data").mkdir()
    with h5py.File(ROOT / ".test" / "data" / "pbmc300.h5") as src:
        X = np.asarray(src["X"], dtype=np.float64)
    normalized = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    with h5py.File(workdir / "data" / "pbmc300.h5", "w") as f:
        f["X"] = normalized
    proc = _snakemake(workdir, "--cores", "1", "results/pbmc300/preprocessed.h5ad")
    assert proc.returncode != 0
    console = proc.stdout + proc.stderr
    assert "data/pbmc300.h5" in console
    assert "raw counts" in console or "normalized" in console
    assert not (workdir / "results" / "pbmc300" / "preprocessed.h5ad").exists()


def test_typo_in_config_fails_before_anything_runs(tmp_path):
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    cfg = tmp_path / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("n_latent: 6", "n_latnet: 6"))
    proc = _snakemake(tmp_path, "-n")
    assert proc.returncode != 0
    assert "n_latnet" in proc.stdout + proc.stderr
