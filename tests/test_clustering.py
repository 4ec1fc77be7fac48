"""Clustering of an embedding: kNN graph, Leiden at several resolutions, UMAP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scvae.clustering import cluster
from scvae.errors import InputError

N_CELLS = 600  # cells of the pbmc_counts fixture


def test_cluster_several_resolutions_with_umap(pbmc_pca):
    out = cluster(pbmc_pca, resolutions=(1.0, 0.5), seed=0, copy=True)
    assert "scvae_leiden" not in pbmc_pca.obs  # copy=True leaves the input alone
    for col in ("scvae_leiden", "scvae_leiden_r1.0", "scvae_leiden_r0.5"):
        assert isinstance(out.obs[col].dtype, pd.CategoricalDtype)
    assert out.obs["scvae_leiden"].equals(out.obs["scvae_leiden_r1.0"])
    assert out.obsm["X_umap"].shape == (N_CELLS, 2)
    params = out.uns["scvae"]["cluster"]["params"]
    assert params["keys"] == ["scvae_leiden_r1.0", "scvae_leiden_r0.5"]
    assert params["resolutions"] == [1.0, 0.5]
    assert params["n_clusters"][0] == out.obs["scvae_leiden"].nunique()
    # a lower resolution never gives more clusters here
    assert params["n_clusters"][1] <= params["n_clusters"][0]


def test_cluster_single_resolution_in_place_and_reproducible(pbmc_pca):
    a = pbmc_pca.copy()
    assert cluster(a, resolutions=[1.0], umap=False, seed=3) is None
    assert "scvae_leiden" in a.obs
    assert not any(c.startswith("scvae_leiden_r") for c in a.obs)
    assert "X_umap" not in a.obsm
    b = cluster(pbmc_pca, resolutions=[1.0], umap=False, seed=3, copy=True)
    assert a.obs["scvae_leiden"].equals(b.obs["scvae_leiden"])


def test_missing_or_bad_embedding_is_an_input_error(pbmc_counts):
    with pytest.raises(InputError, match="X_scvae"):
        cluster(pbmc_counts, copy=True)
    bad = pbmc_counts.copy()
    bad.obsm["X_scvae"] = np.full((bad.n_obs, 3), np.nan)
    with pytest.raises(InputError, match="NaN"):
        cluster(bad)
