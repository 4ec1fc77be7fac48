"""In-memory preprocessing: filters, highly variable genes and the record."""

from __future__ import annotations

import importlib.util
import logging

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import scvae.preprocess.memory
from scvae.data.h5ad import write_h5ad
from scvae.data.readers import read_counts
from scvae.errors import InputError
from scvae.preprocess.memory import FILTER_SETTINGS, effective_settings, preprocess
from scvae.preprocess.qc import add_qc_metrics

HAS_SKMISC = importlib.util.find_spec("skmisc") is not None
needs_skmisc = pytest.mark.skipif(
    not HAS_SKMISC,
    reason="scikit-misc is not installed: sc.pp.highly_variable_genes(flavor='seurat_v3') needs it",
)


def steps(adata: anndata.AnnData) -> dict:
    return adata.uns["scvae"]["preprocess"]["steps"]


def assert_counts_in_sync(adata: anndata.AnnData) -> None:
    assert isinstance(adata.X, sparse.csr_matrix) and adata.X.dtype == np.float32
    assert adata.layers["counts"] is not adata.X
    assert (adata.layers["counts"] != adata.X).nnz == 0
    np.testing.assert_array_equal(adata.X.data, np.round(adata.X.data))


def fake_hvg(adata, *, n_top_genes, layer, **kwargs):
    """Stand-in for seurat_v3 when scikit-misc is missing: the highest-variance genes."""
    X = adata.layers[layer]
    mean = np.asarray(X.mean(axis=0)).ravel()
    var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    flags = np.zeros(adata.n_vars, dtype=bool)
    flags[np.argsort(-var, kind="stable")[:n_top_genes]] = True
    adata.var["highly_variable"] = flags


# ------------------------------------------------------------------- real data

REAL_FILES = [
    "pbmc4k_top2000.h5",
    "mouse_bladder_top2000.h5",
    "worm_neuron_top2000.h5",
    "mouse_bladder_2100_allgenes.h5",
    "worm_neuron_allgenes.h5",
    "celltypist_sample_10x_mtx",
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_defaults_keep_almost_all_cells(shared_data, name):
    adata = read_counts(shared_data / name)
    n_in = adata.n_obs
    # Highly-variable selection needs scikit-misc; the filters are what this checks.
    preprocess(adata, n_top_genes=2000 if HAS_SKMISC else None)
    assert adata.n_obs >= 0.95 * n_in
    assert_counts_in_sync(adata)
    record = adata.uns["scvae"]["preprocess"]
    assert record["cells_in"] == n_in and record["cells_out"] == adata.n_obs
    assert (np.asarray(adata.X.sum(axis=1)).ravel() > 0).all()
    assert (np.asarray((adata.X > 0).sum(axis=0)).ravel() >= 3).all()
    if "label" in adata.obs:
        assert adata.obs["label"].notna().all()


def test_mito_filter_on_real_10x(shared_data):
    adata = read_counts(shared_data / "celltypist_sample_10x_mtx")
    before = adata.copy()
    add_qc_metrics(before)
    too_high = int((before.obs["pct_counts_mt"] > 20).sum())
    assert too_high > 0
    preprocess(adata, max_mito_fraction=0.2, n_top_genes=None)
    assert steps(adata)["2_filter_cells"]["failed_max_mito_fraction"] == too_high
    assert adata.obs["pct_counts_mt"].max() <= 20
    assert steps(adata)["1_drop_empty"]["genes_removed"] > 20_000  # all-zero genes


@needs_skmisc
def test_seurat_v3_hvg_on_real_allgenes(shared_data):
    adata = read_counts(shared_data / "mouse_bladder_2100_allgenes.h5")
    preprocess(adata, n_top_genes=1000)
    assert adata.n_vars == 1000
    assert steps(adata)["5_highly_variable_genes"]["hvg"] == "seurat_v3"
    assert_counts_in_sync(adata)


# ---------------------------------------------------------------- small data


def test_hvg_subsets_and_drops_cells_left_empty(small_counts, monkeypatch):
    monkeypatch.setattr(sc.pp, "highly_variable_genes", fake_hvg)
    monkeypatch.setattr(scvae.preprocess.memory, "require_hvg_backend", lambda *args: None)
    X = small_counts.X.toarray()
    X[:, 30:] *= 10  # genes 30-39 become the most variable ones
    X[0, 30:] = 0  # cell 0 has no counts in them
    small_counts.X = sparse.csr_matrix(X)
    small_counts.layers["counts"] = small_counts.X.copy()
    preprocess(small_counts, n_top_genes=10, min_genes=1)
    assert list(small_counts.var_names) == [f"GENE{i}" for i in range(30, 40)]
    assert "cell0" not in small_counts.obs_names
    assert steps(small_counts)["6_drop_empty_after_hvg"]["cells_removed"] == 1
    assert_counts_in_sync(small_counts)


@pytest.mark.skipif(HAS_SKMISC, reason="checks the message shown without scikit-misc")
def test_missing_skmisc_raises_before_changing_adata(small_counts):
    with pytest.raises(ImportError, match="scikit-misc.*n_top_genes=None"):
        preprocess(small_counts, n_top_genes=10)
    assert small_counts.shape == (60, 40) and "scvae" not in small_counts.uns


def test_hvg_skipped_when_few_genes(small_counts, caplog):
    with caplog.at_level(logging.INFO, logger="scvae.preprocess"):
        preprocess(small_counts, n_top_genes=2000)
    assert small_counts.n_vars == 40
    assert steps(small_counts)["5_highly_variable_genes"]["hvg"].startswith("skipped")
    assert "40 genes <= n_top_genes=2000" in caplog.text


def test_all_zero_cells_and_genes_dropped_with_count(small_counts, caplog):
    X = small_counts.X.toarray()
    X[[5, 7], :] = 0
    X[:, [10, 11, 12]] = 0
    small_counts.X = sparse.csr_matrix(X)
    with caplog.at_level(logging.INFO, logger="scvae.preprocess"):
        out = preprocess(small_counts, copy=True, min_genes=0, min_cells=0)
    assert out.shape == (58, 37)
    assert steps(out)["1_drop_empty"]["cells_removed"] == 2
    assert steps(out)["1_drop_empty"]["genes_removed"] == 3
    assert "removed 2 cell(s) and 3 gene(s) with no counts" in caplog.text


def test_cell_and_gene_filters(small_counts):
    X = small_counts.X.toarray()
    X[:, 20] = 0
    X[[0, 1], 20] = 1  # gene 20 is now in 2 cells only
    small_counts.X = sparse.csr_matrix(X)
    small_counts.layers["counts"] = small_counts.X.copy()
    totals = pd.Series(X.sum(axis=1))
    lo, hi = int(totals.quantile(0.1)), int(totals.quantile(0.9))
    expected = int(((totals >= lo) & (totals <= hi)).sum())
    preprocess(small_counts, min_counts=lo, max_counts=hi, min_cells=3)
    assert small_counts.n_obs == expected
    assert small_counts.obs["total_counts"].between(lo, hi).all()
    assert "GENE20" not in small_counts.var_names
    assert steps(small_counts)["3_filter_genes"]["genes_removed"] >= 1
    assert_counts_in_sync(small_counts)


def test_mito_prefix_case_insensitive_and_skip_note(small_counts):
    small_counts.var_names = [n.replace("MT-", "mt-") for n in small_counts.var_names]
    out = preprocess(small_counts, copy=True, max_mito_fraction=0.5)
    assert out.uns["scvae"]["preprocess"]["n_mito_genes"] == 3
    assert "pct_counts_mt" in out.obs
    no_mito = small_counts[:, 3:].copy()
    out = preprocess(no_mito, copy=True, max_mito_fraction=0.05)
    assert out.n_obs == 60
    assert steps(out)["2_filter_cells"]["mito_filter"].startswith("skipped: no genes start")


def test_copy_leaves_input_alone(small_counts):
    original = small_counts.copy()
    out = preprocess(small_counts, copy=True, min_genes=35)
    assert out is not small_counts and out.n_obs < 60
    assert small_counts.shape == original.shape and "scvae" not in small_counts.uns
    assert preprocess(small_counts, min_genes=35) is None
    assert small_counts.shape == out.shape


def test_record_survives_h5ad_round_trip(small_counts, tmp_path):
    small_counts.uns["scvae"] = {"input": {"path": "x.csv", "format": "csv"}}
    preprocess(small_counts)
    path = tmp_path / "p.h5ad"
    write_h5ad(small_counts, path)
    back = anndata.read_h5ad(path)
    record = back.uns["scvae"]["preprocess"]
    assert record["settings"]["min_counts"] == "none"
    assert record["settings"]["min_genes"] == 5
    assert back.uns["scvae"]["input"]["path"] == "x.csv"


def test_empty_after_filtering_names_file_and_settings(small_counts):
    small_counts.uns["scvae"] = {"input": {"path": "/data/sample.h5ad", "format": "h5ad"}}
    with pytest.raises(InputError) as err:
        preprocess(small_counts, min_genes=1000)
    msg = str(err.value)
    assert msg.startswith("/data/sample.h5ad: no cells left") and "min_genes=1000" in msg
    assert small_counts.shape == (60, 40) and "preprocess" not in small_counts.uns["scvae"]
    with pytest.raises(InputError, match="no genes left.*min_cells=1000"):
        preprocess(small_counts, min_cells=1000)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"max_mito_fraction": 20}, "fraction between 0 and 1"),
        ({"min_genes": -1}, "non-negative integer"),
        ({"min_counts": 10, "max_counts": 5}, "no cell could pass"),
        ({"n_top_genes": 0}, "None to keep all genes"),
    ],
)
def test_invalid_settings(small_counts, setting, match):
    with pytest.raises(InputError, match=match):
        preprocess(small_counts, **setting)


def test_normalized_input_rejected(small_counts):
    sc.pp.normalize_total(small_counts)
    with pytest.raises(InputError, match="the input AnnData: .*normalized or log-transformed"):
        preprocess(small_counts)


def test_effective_settings_match_preprocess_defaults():
    settings = effective_settings(min_genes=200)
    assert set(settings) == set(FILTER_SETTINGS)
    assert settings["min_genes"] == 200 and settings["min_cells"] == 3
