"""Scores of an embedding and its clusterings against labels, and of a posterior draw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scvae import metrics as M
from scvae.clustering import cluster
from scvae.errors import InputError
from scvae.scores import posterior_sample_scores, score

N_CELLS = 600  # cells of the pbmc_counts fixture


def test_score_with_labels(pbmc_pca):
    adata = cluster(pbmc_pca, resolutions=(1.0, 0.5), umap=False, copy=True)
    m = score(adata, rng=0)
    for key in (
        "leiden_ari_r1.0",
        "leiden_nmi_r0.5",
        "n_clusters_r1.0",
        "leiden_ari",
        "kmeans_ari",
        "kmeans_nmi",
        "asw_label",
        "knn_purity",
    ):
        assert key in m, key
    assert m["leiden_ari"] == m["leiden_ari_r1.0"]
    assert m["n_clusters"] == adata.obs["scvae_leiden"].nunique()
    # PCA separates PBMC cell types reasonably even on 600 cells
    assert 0.3 < m["kmeans_ari"] <= 1.0
    assert 0.5 < m["knn_purity"] <= 1.0
    assert 0.5 < m["asw_label"] <= 1.0
    assert "modularity" not in m
    assert adata.uns["scvae"]["cluster"]["metrics"] == m
    assert score(adata, rng=0) == m
    cluster(adata, resolutions=[0.8], umap=False)  # re-clustering drops stale metrics
    assert set(adata.uns["scvae"]["cluster"]) == {"params"}


def test_score_without_labels_and_with_partial_labels(pbmc_pca):
    adata = cluster(pbmc_pca, umap=False, copy=True)
    unlabelled = adata.copy()
    del unlabelled.obs["label"]
    m = score(unlabelled)
    assert set(m) == {
        "n_clusters_r1.0",
        "modularity_r1.0",
        "silhouette_r1.0",
        "n_clusters",
        "modularity",
        "silhouette",
    }
    assert 0.3 < m["modularity"] < 1.0
    assert -1.0 <= m["silhouette"] <= 1.0

    partial = adata.copy()
    partial.obs.loc[partial.obs_names[:50], "label"] = np.nan
    mp = score(partial)
    assert partial.uns["scvae"]["cluster"]["score_params"]["n_labelled"] == N_CELLS - 50
    assert not math.isnan(mp["kmeans_ari"])


def test_scoring_without_a_recorded_clustering_is_an_input_error(pbmc_counts):
    with pytest.raises(InputError, match="uns"):
        good = pbmc_counts.copy()
        good.obsm["X_scvae"] = np.zeros((good.n_obs, 2))
        score(good)


def test_posterior_draw_exposes_a_collapsed_code_that_the_means_hide():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 100)
    centers = rng.normal(size=(3, 4))
    structure = centers[np.repeat([0, 1, 2], 100)] + 0.05 * rng.normal(size=(300, 4))
    # Collapsed: every mean is within 1e-3 of 0 and the posterior scale is the prior's.
    loc, scale = 1e-3 * structure, np.ones((300, 4))
    assert M.kmeans_ari_nmi(loc, labels, rng=0)["ari"] > 0.95  # scale-invariant trace
    collapsed = posterior_sample_scores(loc, scale, labels, n_neighbors=10, resolution=0.1)
    assert collapsed["kmeans_ari_sample"] < 0.05 and collapsed["leiden_ari_sample"] < 0.1
    # Healthy: means spread well beyond the posterior scale; the draw keeps the structure.
    healthy = posterior_sample_scores(
        structure, np.full((300, 4), 0.05), labels, n_neighbors=10, resolution=0.1
    )
    assert healthy["kmeans_ari_sample"] > 0.9 and healthy["leiden_ari_sample"] > 0.8


def test_score_adds_posterior_draw_scores_when_scales_are_present(small_counts):
    rng = np.random.default_rng(0)
    adata = small_counts
    codes = {"B": 0.0, "T": 5.0, "NK": 10.0}
    loc = np.array([[codes[c], 0.0] for c in adata.obs["cell_type"]]) + rng.normal(size=(60, 2))
    adata.obsm["X_scvae"] = loc
    adata.obs["label"] = adata.obs["cell_type"]
    cluster(adata, resolutions=[0.5], n_neighbors=10, umap=False)
    without = score(adata)
    assert "kmeans_ari_sample" not in without  # baselines (PCA) have no posterior scale
    adata.obsm["X_scvae_scale"] = np.full((60, 2), 100.0)  # the draw is all noise
    noisy = score(adata)
    assert noisy["kmeans_ari"] > 0.9 and noisy["kmeans_ari_sample"] < 0.2
    assert "leiden_ari_sample" in noisy
