"""The Snakemake workflow end to end on the `.test` config (300 real PBMC cells).

The run is killed once while it trains and then resumed, as a user would after a lost
node or a scheduler kill; every test of the result checks that resumed run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from scvae.data.runfiles import read_run
from scvae.utils.torchfile import load_tensor_file

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


def _first_checkpoint(workdir: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(workdir.glob("checkpoints/*/*/seed*/checkpoint.pt"))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the workflow ended (status {proc.returncode}) before any checkpoint")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no training checkpoint within {timeout:.0f} s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> dict:
    """Run the `.test` workflow in a copy (the repository stays clean), killed mid-training.

    As soon as the first training checkpoint appears the whole process group of
    Snakemake gets SIGKILL, as from a scheduler or a lost node. The run is then
    unlocked and rerun with ``--rerun-incomplete``, as docs/troubleshooting.md says.
    """
    workdir = tmp_path_factory.mktemp("wf")
    shutil.copytree(ROOT / ".test" / "config", workdir / "config")
    shutil.copytree(ROOT / ".test" / "data", workdir / "data")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    with open(workdir / "first_run.log", "w") as console:
        proc = subprocess.Popen(
            [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
            + ["--cores", "2"],
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group, jobs included
        )
        _first_checkpoint(workdir, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    # What the kill left: per variant, the epoch of its checkpoint and its train outputs.
    killed = {}
    for variant in config["run_variants"]:
        checkpoint = workdir / "checkpoints" / "pbmc300" / variant / "seed0" / "checkpoint.pt"
        run = workdir / "results" / "pbmc300" / variant / "seed0"
        killed[variant] = {
            "epoch": load_tensor_file(checkpoint, "checkpoint")[0]["state"]["epoch"]
            if checkpoint.exists()
            else None,
            "files": sorted(p.name for p in run.iterdir()) if run.exists() else [],
        }

    # A SIGKILL leaves Snakemake's lock behind; --unlock is the documented first step.
    unlock = _snakemake(workdir, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-4000:]
    proc = _snakemake(workdir, "--cores", "2", "--rerun-incomplete")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"workdir": workdir, "killed": killed, "max_epochs": config["defaults"]["max_epochs"]}


@pytest.fixture(scope="module")
def test_run(interrupted_run) -> Path:
    """The working directory of the completed (killed, then resumed) `.test` run."""
    return interrupted_run["workdir"]


def test_killed_training_left_no_final_output_and_resumed(interrupted_run):
    workdir, max_epochs = interrupted_run["workdir"], interrupted_run["max_epochs"]
    mid_training = {
        v: k for v, k in interrupted_run["killed"].items() if k["epoch"] and k["epoch"] < max_epochs
    }
    assert mid_training, f"the kill came after training ended: {interrupted_run['killed']}"
    for variant, at_kill in mid_training.items():
        # Outputs are written under a temporary name and renamed: nothing looked final.
        assert not {"model.pt", "history.tsv", "latent.h5ad"} & set(at_kill["files"])
        log = (workdir / "logs" / "pbmc300" / variant / "seed0" / "train.log").read_text()
        assert f"after epoch {at_kill['epoch']}" in log and "resuming from" in log
        history = pd.read_csv(
            workdir / "results" / "pbmc300" / variant / "seed0" / "history.tsv", sep="\t"
        )
        assert list(history["epoch"]) == list(range(1, max_epochs + 1))
    # No temporary file of a write cut short is left anywhere among the results.
    assert not [p for p in (workdir / "results").rglob(".*") if ".tmp" in p.name]


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

    run = results / "recommended" / "seed0"
    # final.h5ad alone: what a user plots, no copy of the counts or of the latent.
    slim = anndata.read_h5ad(run / "final.h5ad")
    assert slim.X is None and not slim.layers and "X_scvae" not in slim.obsm
    # No decoded layer by default (scvae.read_run(path, decoded=True) computes it): a
    # VAE's final.h5ad is about a PCA baseline's size (1.2x here; 3.4x with the layer).
    pca_final = results / "pca6" / "seed0" / "final.h5ad"
    assert (run / "final.h5ad").stat().st_size < 1.5 * pca_final.stat().st_size
    assert slim.obsm["X_umap"].shape == (slim.n_obs, 2) and "label" in slim.obs
    # Opened with everything attached: the preprocessed counts and the run's latent.
    final = read_run(run / "final.h5ad")
    pre = anndata.read_h5ad(results / "preprocessed.h5ad")
    assert (final.layers["counts"] != pre.layers["counts"]).nnz == 0
    assert (final.X != pre.X).nnz == 0
    latent = anndata.read_h5ad(run / "latent.h5ad")
    np.testing.assert_array_equal(final.obsm["X_scvae"], latent.obsm["X_scvae"])
    assert final.obsm["X_scvae"].shape == (final.n_obs, 6)
    assert final.obsm["X_umap"].shape == (final.n_obs, 2)
    assert final.obs["scvae_leiden"].dtype == "category"
    assert "label" in final.obs
    assert final.uns["scvae"]["train"]["training"]["warmup_fraction"] == 0.5  # no batches
    scvae_uns = final.uns["scvae"]
    assert scvae_uns["diagnostics"]["verdict"] in {"healthy", "partial collapse", "collapsed"}
    assert {"preprocess", "train", "cluster"} <= set(scvae_uns)
    # Provenance survives into the final file: library versions and the settings hash.
    versions = scvae_uns["train"]["versions"]
    for package in ("torch", "pyro-ppl", "scanpy", "anndata"):
        assert versions[package] not in ("", "not installed"), package
    assert len(scvae_uns["train"]["summary"]["config_hash"]) == 16
    diag = json.loads((results / "recommended" / "seed0" / "diagnostics.json").read_text())
    assert {"verdict", "verdict_reason", "mi", "active_units", "kl_per_dim", "validation"} <= set(
        diag
    )
    history = pd.read_csv(results / "recommended" / "seed0" / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, 9))


def test_a_dataset_with_batches_is_integrated_and_scored_with_scib(test_run):
    """cellbench192: 3 plates of real CellBench cells, run with ``batch_key: batch``."""
    results = test_run / "results" / "cellbench192"
    pre = anndata.read_h5ad(results / "preprocessed.h5ad")
    assert pre.obs["batch"].dtype == "category" and pre.obs["batch"].nunique() == 3
    assert pre.uns["scvae"]["preprocess"]["batch_key"] == "batch"

    table = pd.read_csv(results / "comparison.tsv", sep="\t")
    assert set(table["variant"]) == {"recommended", "vanilla", "pca6", "harmony"}
    for column in ("scib_total", "scib_bio", "scib_batch", "scib_ilisi", "scib_kbet"):
        assert table[column].between(0, 1).all(), column
    total = 0.6 * table["scib_bio"] + 0.4 * table["scib_batch"]
    assert np.allclose(table["scib_total"], total)
    assert (results / "figures" / "scib_table.png").stat().st_size > 0

    diag = json.loads((results / "recommended" / "seed0" / "diagnostics.json").read_text())
    assert diag["batch_in_z"]["n_batches"] == 3
    assert 0 <= diag["batch_in_z"]["accuracy"] <= 1
    metrics = json.loads((results / "recommended" / "seed0" / "metrics.json").read_text())
    assert metrics["scib"]["n_batches"] == 3
    final = read_run(results / "recommended" / "seed0" / "final.h5ad")
    assert final.obs["batch"].nunique() == 3 and "label" in final.obs
    train = final.uns["scvae"]["train"]
    assert train["model"]["condition_on_batch"] and train["model"]["n_batch"] == 3
    assert train["training"]["warmup_fraction"] == 1.0  # the config's with_batches
    assert list(train["categories"]["batch"]) == sorted(pre.obs["batch"].unique())


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


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("n_latent: 6", "n_latnet: 6", "n_latnet"),
        ("run_variants: [recommended, vanilla]", "run_variants: [recommended, vanila]", "vanila"),
    ],
    ids=["unknown-key", "undefined-variant"],
)
def test_typo_in_config_fails_before_anything_runs(tmp_path, old, new, named):
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    cfg = tmp_path / "config" / "config.yaml"
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new))
    proc = _snakemake(tmp_path, "-n")
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr


def test_keep_going_finishes_the_other_runs_when_one_diverges(test_run):
    """A variant whose loss really becomes NaN (lr = 1e6 diverges on the first step).

    With --keep-going its job fails alone, with the cause on the console and in its log,
    and leaves no outputs; the other run's jobs, including those that start after the
    failure, complete.
    """
    extra = test_run / "config" / "diverging.yaml"
    extra.write_text(yaml.safe_dump({"variants": {"diverging": {"lr": 1.0e6}}}))
    diverging = test_run / "results" / "pbmc300" / "diverging" / "seed0"
    other = test_run / "results" / "pbmc300" / "vanilla" / "seed1"
    proc = _snakemake(
        test_run,
        "results/pbmc300/diverging/seed0/diagnostics.json",
        "results/pbmc300/vanilla/seed1/diagnostics.json",
        "--cores", "2", "--keep-going", "--configfile", str(extra),
    )  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "non-finite loss" in console and "lr=1e+06" in console
    log = (test_run / "logs" / "pbmc300" / "diverging" / "seed0" / "train.log").read_text()
    assert "non-finite loss (nan) at epoch 1" in log
    assert not diverging.exists() or not any(diverging.iterdir())
    for name in ("model.pt", "history.tsv", "latent.h5ad", "diagnostics.json"):
        assert (other / name).stat().st_size > 0, name
