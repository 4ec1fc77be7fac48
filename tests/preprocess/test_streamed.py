"""Streamed preprocessing of large h5ad files: the in-memory path's output and errors."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scvae.data.ondisk import row_chunks
from scvae.data.synthetic import synthetic_counts
from scvae.errors import InputError
from scvae.preprocess.streamed import preprocess_h5ad_backed
from scvae.stages.preprocess import run_preprocess


def _messy_h5ad(path, *, batches=False):
    """Synthetic counts with empty cells and genes, MT- genes, a duplicate name, an obsm.

    With ``batches``: a ``plate`` column of 3 batches (300 cells each, one shallower)
    and a ``donor`` covariate.
    """
    a = synthetic_counts(900, 300, seed=3)
    X = a.X.tolil()
    X[5, :] = 0
    X[:, 10] = 0
    a.X = X.tocsr()
    a.var_names = [f"MT-{i}" if i < 4 else f"g{i}" for i in range(299)] + ["g5"]
    a.obs["cell_type"] = a.obs.pop("label").astype(str)
    a.obsm["X_emb"] = np.arange(1800, dtype=float).reshape(900, 2)
    if batches:
        plate = np.repeat(["p1", "p2", "p3"], 300)
        a.X = sparse.diags(np.where(plate == "p3", 0.5, 1.0)) @ a.X  # a shallower plate
        a.X.data = np.ceil(a.X.data)
        a.obs["plate"] = pd.Categorical(plate)
        a.obs["donor"] = np.tile([1, 2], 450)  # integers: read as "1", "2"
    a.write_h5ad(path)


def _plain(value):
    """uns as plain Python values: h5ad gives lists back as arrays, which `==` cannot compare."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _assert_same_output(mem: anndata.AnnData, disk: anndata.AnnData, path) -> None:
    assert mem.shape == disk.shape and (mem.X != disk.X).nnz == 0
    assert (mem.layers["counts"] != disk.layers["counts"]).nnz == 0
    with h5py.File(path) as f:  # the counts are on disk once
        assert f["X"] == f["layers/counts"]
    pd.testing.assert_frame_equal(mem.obs, disk.obs)
    pd.testing.assert_frame_equal(mem.var, disk.var, check_exact=False, rtol=1e-9)
    assert _plain(mem.uns["scvae"]) == _plain(disk.uns["scvae"])
    assert mem.uns.get("hvg") == disk.uns.get("hvg")


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
    _assert_same_output(mem, disk, tmp_path / "d.h5ad")
    assert "batch" not in mem.obs and "batch_key" not in mem.uns["scvae"]["preprocess"]
    assert np.array_equal(mem.obsm["X_emb"], disk.obsm["X_emb"])


@pytest.mark.filterwarnings("ignore:.*duplicate gene")
@pytest.mark.parametrize("settings", [{"min_genes": 20, "n_top_genes": 100}, {"n_top_genes": None}])
def test_streamed_batches_equal_the_in_memory_path(tmp_path, monkeypatch, settings):
    _messy_h5ad(tmp_path / "in.h5ad", batches=True)
    options = {"batch_key": "plate", "covariates": ["donor"], "label_key": "cell_type"}
    run_preprocess(
        tmp_path / "in.h5ad", tmp_path / "m.h5ad", tmp_path / "m.png", **options, **settings
    )
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")
    run_preprocess(
        tmp_path / "in.h5ad", tmp_path / "d.h5ad", tmp_path / "d.png", **options, **settings
    )
    mem, disk = anndata.read_h5ad(tmp_path / "m.h5ad"), anndata.read_h5ad(tmp_path / "d.h5ad")
    _assert_same_output(mem, disk, tmp_path / "d.h5ad")
    assert list(disk.obs["batch"].cat.categories) == ["p1", "p2", "p3"]
    assert list(disk.obs["donor"].cat.categories) == ["1", "2"]
    record = disk.uns["scvae"]["preprocess"]
    assert record["batch_key"] == "batch" and list(record["covariate_keys"]) == ["donor"]
    if settings["n_top_genes"]:
        assert disk.var["highly_variable_nbatches"].max() <= 3
        assert record["steps"]["5_highly_variable_genes"]["hvg_batches"] == 3


def test_streamed_batch_aware_hvg_equals_scanpy_on_real_data(shared_data, tmp_path, monkeypatch):
    source = shared_data / "kang_ifnb_2conditions_counts.h5ad"
    options = {"batch_key": "condition", "label_key": "cell_type", "min_genes": 200}
    run_preprocess(source, tmp_path / "m.h5ad", tmp_path / "m.png", **options)
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")
    run_preprocess(source, tmp_path / "d.h5ad", tmp_path / "d.png", **options)
    mem, disk = anndata.read_h5ad(tmp_path / "m.h5ad"), anndata.read_h5ad(tmp_path / "d.h5ad")
    _assert_same_output(mem, disk, tmp_path / "d.h5ad")
    assert disk.n_vars == 2000 and disk.var["highly_variable_nbatches"].isin([1, 2]).all()


@pytest.mark.filterwarnings("ignore:.*duplicate gene")
def test_streamed_batches_errors_like_the_in_memory_path(tmp_path, monkeypatch):
    _messy_h5ad(tmp_path / "in.h5ad", batches=True)
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")
    with pytest.raises(InputError, match=r"batch_key 'plates' is not an obs column.*'plate'"):
        run_preprocess(
            tmp_path / "in.h5ad", tmp_path / "o.h5ad", tmp_path / "o.png", batch_key="plates"
        )
    # The shallow plate loses its cells to min_counts: the error names it.
    with pytest.raises(InputError, match=r"batch 'p3' has \d+ cell\(s\) left of 300 read"):
        preprocess_h5ad_backed(
            tmp_path / "in.h5ad", tmp_path / "o.h5ad", batch_key="plate", min_counts=1200
        )
    assert not (tmp_path / "o.h5ad").exists()


@pytest.mark.filterwarnings("ignore:.*duplicate gene")
def test_streamed_preprocessing_errors_like_the_in_memory_path(tmp_path):
    _messy_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(InputError, match="no cells left after step 2_filter_cells"):
        preprocess_h5ad_backed(tmp_path / "in.h5ad", tmp_path / "o.h5ad", min_genes=10_000)
    with pytest.raises(InputError, match="has no layer 'raw'"):
        preprocess_h5ad_backed(tmp_path / "in.h5ad", tmp_path / "o.h5ad", layer="raw")
    assert not (tmp_path / "o.h5ad").exists()


def test_streamed_counts_that_went_through_float32_are_written_rounded(tmp_path, monkeypatch):
    a = synthetic_counts(300, 60, seed=1)
    a.write_h5ad(tmp_path / "int.h5ad")
    a.X.data = np.nextafter(a.X.data.astype(np.float32), np.float32(np.inf))
    a.write_h5ad(tmp_path / "float.h5ad")
    # Several chunks: one warning for all of them, and every pass reads rounded counts.
    nnz = a.X.nnz
    monkeypatch.setattr(
        "scvae.preprocess.streamed.row_chunks",
        lambda X, rows=None: row_chunks(X, rows, chunk_nnz=nnz // 5),
    )
    settings = {"n_top_genes": 20, "min_counts": 200}
    with pytest.warns(UserWarning) as record:
        preprocess_h5ad_backed(tmp_path / "float.h5ad", tmp_path / "f.h5ad", **settings)
    assert [str(w.message).split(" value(s)")[0] for w in record] == [
        f"{tmp_path / 'float.h5ad'}: rounded {nnz}"
    ]
    preprocess_h5ad_backed(tmp_path / "int.h5ad", tmp_path / "i.h5ad", **settings)
    rounded, integer = (
        anndata.read_h5ad(tmp_path / "f.h5ad"),
        anndata.read_h5ad(tmp_path / "i.h5ad"),
    )
    assert rounded.shape == integer.shape and (rounded.X != integer.X).nnz == 0
    pd.testing.assert_frame_equal(rounded.obs, integer.obs)
    pd.testing.assert_frame_equal(rounded.var, integer.var)
