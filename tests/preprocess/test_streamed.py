"""Streamed preprocessing of large h5ad files: the in-memory path's output and errors."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest

from scvae.data.synthetic import synthetic_counts
from scvae.errors import InputError
from scvae.preprocess.run import run_preprocess
from scvae.preprocess.streamed import preprocess_h5ad_backed


def _messy_h5ad(path):
    """Synthetic counts with empty cells and genes, MT- genes, a duplicate name, an obsm."""
    a = synthetic_counts(900, 300, seed=3)
    X = a.X.tolil()
    X[5, :] = 0
    X[:, 10] = 0
    a.X = X.tocsr()
    a.var_names = [f"MT-{i}" if i < 4 else f"g{i}" for i in range(299)] + ["g5"]
    a.obs["cell_type"] = a.obs.pop("label").astype(str)
    a.obsm["X_emb"] = np.arange(1800, dtype=float).reshape(900, 2)
    a.write_h5ad(path)


@pytest.mark.parametrize(
    "settings",
    [
        {"min_genes": 20, "min_cells": 5, "max_mito_fraction": 0.05, "n_top_genes": 100},
        {"n_top_genes": None},
    ],
)
def test_streamed_preprocessing_equals_the_in_memory_path(tmp_path, monkeypatch, settings):
    _messy_h5ad(tmp_path / "in.h5ad")
    with pytest.warns(UserWarning, match="duplicate gene"):
        run_preprocess(
            tmp_path / "in.h5ad",
            tmp_path / "m.h5ad",
            tmp_path / "m.png",
            label_key="cell_type",
            **settings,
        )
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")  # the same call streams
    with pytest.warns(UserWarning, match="duplicate gene"):
        run_preprocess(
            tmp_path / "in.h5ad",
            tmp_path / "d.h5ad",
            tmp_path / "d.png",
            label_key="cell_type",
            **settings,
        )
    mem, disk = anndata.read_h5ad(tmp_path / "m.h5ad"), anndata.read_h5ad(tmp_path / "d.h5ad")
    assert (tmp_path / "d.png").stat().st_size > 0
    assert mem.shape == disk.shape and (mem.X != disk.X).nnz == 0
    assert (mem.layers["counts"] != disk.layers["counts"]).nnz == 0
    with h5py.File(tmp_path / "d.h5ad") as f:  # the counts are on disk once
        assert f["X"] == f["layers/counts"]
    pd.testing.assert_frame_equal(mem.obs, disk.obs)
    pd.testing.assert_frame_equal(mem.var, disk.var, check_exact=False, rtol=1e-9)
    assert mem.uns["scvae"]["preprocess"] == disk.uns["scvae"]["preprocess"]
    assert mem.uns.get("hvg") == disk.uns.get("hvg")
    assert np.array_equal(mem.obsm["X_emb"], disk.obsm["X_emb"])


@pytest.mark.filterwarnings("ignore:.*duplicate gene")
def test_streamed_preprocessing_errors_like_the_in_memory_path(tmp_path):
    _messy_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(InputError, match="no cells left after step 2_filter_cells"):
        preprocess_h5ad_backed(tmp_path / "in.h5ad", tmp_path / "o.h5ad", min_genes=10_000)
    with pytest.raises(InputError, match="has no layer 'raw'"):
        preprocess_h5ad_backed(tmp_path / "in.h5ad", tmp_path / "o.h5ad", layer="raw")
    assert not (tmp_path / "o.h5ad").exists()
