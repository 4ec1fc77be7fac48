"""The comparison figures: KL heatmap, MI and active units, scores, UMAPs, curves."""

from __future__ import annotations

import os
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scvae import compare
from scvae.plotting import comparison

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for variant, mi, au, ari in [
        ("vanilla", 0.2, 1, 0.3),
        ("beta0.5", 2.5, 7, 0.7),
        ("free_bits", 3.1, 9, 0.75),
    ]:
        for seed in range(3):
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "n_latent": 10,
                    "mi": mi + 0.2 * rng.normal(),
                    "active_units": max(0, au + int(rng.integers(-1, 2))),
                    "kmeans_ari": ari + 0.03 * rng.normal(),
                    "kmeans_nmi": ari + 0.05 + 0.03 * rng.normal(),
                    "leiden_ari": ari - 0.05 + 0.03 * rng.normal(),
                    "leiden_nmi": ari + 0.03 * rng.normal(),
                    "kind": "vae",
                    "status": "ok",
                    "collapsed": variant == "vanilla" and seed == 0,
                }
            )
    rows.append(
        {
            "variant": "pca10",
            "seed": 0,
            "n_latent": 10,
            "kmeans_ari": 0.79,
            "kmeans_nmi": 0.78,
            "leiden_ari": 0.5,
            "leiden_nmi": 0.7,
            "kind": "baseline",
            "status": "ok",
            "collapsed": False,
        }
    )
    rows.append(
        {
            "variant": "scvi10",
            "seed": 0,
            "n_latent": 10,
            "kind": "baseline",
            "status": "unavailable",
            "collapsed": False,
        }
    )
    return pd.DataFrame(rows).reindex(columns=compare.COLUMNS + compare.EXTRA_COLUMNS)


def _umap_adata(seed: int, labelled: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    n, k = 300, 5
    labels = rng.integers(0, k, n)
    centres = rng.normal(scale=6, size=(k, 2))
    adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    adata.obsm["X_umap"] = centres[labels] + rng.normal(size=(n, 2))
    if labelled:
        adata.obs["label"] = pd.Categorical([f"type {i}" for i in labels])
    clusters = np.where(rng.random(n) < 0.1, rng.integers(0, k + 2, n), labels)
    adata.obs["scvae_leiden"] = pd.Categorical(clusters.astype(str))
    return adata


def _history(scale: float) -> pd.DataFrame:
    epoch = np.arange(60)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "train_elbo": -2000 * scale * np.exp(-epoch / 3) - 900 - 50 * np.exp(-epoch / 20),
            "val_elbo": -2000 * scale * np.exp(-epoch / 3) - 920 - 40 * np.exp(-epoch / 20),
            "kl": 30 * (1 - np.exp(-epoch / 10)) * scale,
            "kl_weight": np.minimum(1.0, epoch / 30),
        }
    )


def _check_png(path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.fixture
def out_dir(tmp_path):
    # SCVAE_PLOT_DIR keeps the PNGs for a look by eye
    keep = os.environ.get("SCVAE_PLOT_DIR")
    return tmp_path if not keep else __import__("pathlib").Path(keep)


def test_plot_kl_heatmap(out_dir):
    records = [
        {"variant": "vanilla", "diagnostics": {"kl_per_dim": [4.0] + [0.01] * 9}},
        {"variant": "beta0.5", "diagnostics": {"kl_per_dim": list(np.linspace(3, 0.2, 10))}},
        {"variant": "small", "diagnostics": {"kl_per_dim": [1.0, 2.0, 0.5]}},
    ]
    path = out_dir / "kl_heatmap.png"
    comparison.plot_kl_heatmap(compare.collect_kl_per_dim(records), path)
    _check_png(path)


def test_plot_mi_au(out_dir):
    path = out_dir / "mi_au.png"
    comparison.plot_mi_au(_runs(), path)
    _check_png(path)


def test_plot_scores_labelled_and_unlabelled(out_dir):
    path = out_dir / "scores.png"
    comparison.plot_scores(_runs(), path)
    _check_png(path)
    unlabelled = _runs()
    unlabelled[["kmeans_ari", "kmeans_nmi", "leiden_ari", "leiden_nmi"]] = np.nan
    unlabelled["silhouette"] = np.linspace(0.1, 0.4, len(unlabelled))
    unlabelled["modularity"] = 0.6
    path = out_dir / "scores_unlabelled.png"
    comparison.plot_scores(unlabelled, path)
    _check_png(path)


def test_plot_umap_grid(out_dir):
    adatas = {
        "beta0.5": _umap_adata(1),
        "pca10": _umap_adata(2),
        "unlabelled": _umap_adata(3, False),
    }
    path = out_dir / "umap_grid.png"
    comparison.plot_umap_grid(adatas, path)
    _check_png(path)


def test_plot_umap_grid_with_batches_has_a_batch_column(out_dir):
    adatas = {"scvi": _umap_adata(1), "pca50": _umap_adata(2), "unlabelled": _umap_adata(3, False)}
    rng = np.random.default_rng(0)
    for adata in adatas.values():
        adata.obs["batch"] = pd.Categorical(rng.choice(["plate1", "plate2", "plate3"], adata.n_obs))
    adatas["scvi"].uns["scvae"] = {"cluster": {"metrics": {"scib_batch": 0.8123}}}
    del adatas["pca50"].obs["batch"]
    path = out_dir / "umap_grid_batches.png"
    fig = comparison.plot_umap_grid(adatas, path, batch_key="batch")
    _check_png(path)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 9  # label | batch | clusters, one row per run
    assert titles[1] == "scvi: batch (3)\nscIB batch correction = 0.812"
    assert titles[4] == "pca50: no batches"
    assert titles[7] == "unlabelled: batch (3)"
    assert [t.split(":")[1].strip() for t in titles[0::3]] == [
        "cell-type label (5)",
        "cell-type label (5)",
        "no labels",
    ]
    legends = {lg.get_title().get_text() for lg in fig.legends}
    assert legends == {"label", "batch"}
    # no batch key (or a column none of the data have): two columns, as before
    no_batch = comparison.plot_umap_grid(adatas, out_dir / "umap_grid_nobatch.png")
    assert len(no_batch.axes) == 6
    absent = comparison.plot_umap_grid(adatas, out_dir / "umap_grid_x.png", batch_key="plate")
    assert len(absent.axes) == 6


def _scib_runs() -> pd.DataFrame:
    runs = _runs()
    rng = np.random.default_rng(1)
    n = len(runs)
    runs["scib_bio"] = rng.uniform(0.6, 0.9, n)
    runs["scib_batch"] = rng.uniform(0.2, 0.8, n)
    runs["scib_total"] = 0.6 * runs["scib_bio"] + 0.4 * runs["scib_batch"]
    for metric in ("isolated_labels", "leiden_nmi", "kmeans_ari", "clisi"):
        runs[f"scib_{metric}"] = rng.uniform(0.5, 1.0, n)
    for metric in ("bras", "ilisi", "kbet", "graph_connectivity", "pcr_comparison"):
        runs[f"scib_{metric}"] = rng.uniform(0.0, 1.0, n)
    runs.loc[runs["status"] == "unavailable", runs.columns.str.startswith("scib_")] = np.nan
    return runs


def test_plot_scib_table(out_dir, tmp_path):
    path = out_dir / "scib_table.png"
    comparison.plot_scib_table(_scib_runs(), path)
    _check_png(path)
    # without scIB columns (a dataset without batches) it says so instead of failing
    comparison.plot_scib_table(_runs(), tmp_path / "empty.png")
    _check_png(tmp_path / "empty.png")


def test_plot_training_curves(out_dir):
    hist = {"vanilla s0": _history(1.0), "beta0.5 s0": _history(0.6)}
    hist["no_val s0"] = _history(0.3).drop(columns="val_elbo")
    path = out_dir / "training_curves.png"
    comparison.plot_training_curves(hist, path)
    _check_png(path)


def test_plots_do_not_use_pyplot(tmp_path):
    comparison.plot_mi_au(_runs(), tmp_path / "x.png")
    # figures are built without pyplot, so no global figure state is created
    assert (
        "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
    )


def test_empty_inputs_still_draw(tmp_path):
    comparison.plot_kl_heatmap(pd.DataFrame(), tmp_path / "a.png")
    comparison.plot_mi_au(_runs().iloc[-2:], tmp_path / "b.png")
    comparison.plot_training_curves({}, tmp_path / "c.png")
    comparison.plot_umap_grid({}, tmp_path / "d.png")
    comparison.plot_scib_table(_runs().iloc[:0], tmp_path / "e.png")
    assert len(list(tmp_path.glob("*.png"))) == 5
