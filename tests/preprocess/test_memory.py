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
from scvae.data.batches import read_dataset
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


# ------------------------------------------------------------------------ batches

BATCH_FILES = [
    ("cellbench_5batches_counts.h5ad", "batch", 5),
    ("kang_ifnb_2conditions_counts.h5ad", "condition", 2),
]


@needs_skmisc
@pytest.mark.parametrize(("name", "batch_key", "n_batches"), BATCH_FILES)
def test_batch_aware_hvg_on_the_shared_files(shared_data, name, batch_key, n_batches):
    adata = read_dataset(shared_data / name, batch_key=batch_key)
    reference = adata.copy()
    preprocess(adata, batch_key="batch")
    assert adata.shape == (reference.n_obs, 2000)
    # The genes scanpy's batch-aware seurat_v3 selects after the same gene filter.
    sc.pp.filter_genes(reference, min_cells=3)
    sc.pp.highly_variable_genes(
        reference, flavor="seurat_v3", n_top_genes=2000, layer="counts", batch_key="batch"
    )
    selected = reference.var_names[reference.var["highly_variable"]]
    assert set(adata.var_names) == set(selected)
    assert adata.var["highly_variable_nbatches"].between(0, n_batches).all()
    # Ranked per batch, the selection differs from the one on all cells pooled.
    pooled = sc.pp.highly_variable_genes(
        reference, flavor="seurat_v3", n_top_genes=2000, layer="counts", inplace=False
    )
    assert set(selected) != set(reference.var_names[pooled["highly_variable"].to_numpy()])
    record = adata.uns["scvae"]["preprocess"]
    assert record["batch_key"] == "batch" and record["covariate_keys"] == []
    assert record["batch_cells"] == adata.obs["batch"].value_counts().to_dict()
    assert len(record["batch_cells"]) == n_batches
    assert steps(adata)["5_highly_variable_genes"]["hvg_batches"] == n_batches
    assert_counts_in_sync(adata)


def _with_plates(adata: anndata.AnnData, sizes: dict[str, int]) -> anndata.AnnData:
    adata.obs["batch"] = pd.Categorical(np.repeat(list(sizes), list(sizes.values())))
    return adata


def _set_counts(adata: anndata.AnnData, X: np.ndarray) -> None:
    adata.X = sparse.csr_matrix(X.astype(np.float32))
    adata.layers["counts"] = adata.X.copy()


@pytest.fixture
def counts_300() -> anndata.AnnData:
    """300 cells x 40 Poisson genes in read_counts' layout."""
    X = sparse.csr_matrix(np.random.default_rng(1).poisson(3.0, size=(300, 40)).astype(np.float32))
    adata = anndata.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(300)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(40)]),
    )
    adata.layers["counts"] = X.copy()
    adata.uns["scvae"] = {"input": {"path": "plates.h5ad", "format": "h5ad"}}
    return adata


def test_a_batch_left_too_small_is_an_error_naming_it(counts_300):
    adata = _with_plates(counts_300, {"p1": 150, "p2": 131, "tiny": 19})
    with pytest.raises(
        InputError,
        match=r"plates\.h5ad: too few cells after step 4_drop_empty_after_filters: batch 'tiny' "
        r"has 19 cell\(s\) left of 19 read\. Every batch needs at least 20 cells",
    ):
        preprocess(adata, batch_key="batch", n_top_genes=None)
    assert adata.shape == (300, 40) and "preprocess" not in adata.uns["scvae"]


def test_a_batch_emptied_by_the_filters_is_an_error(counts_300):
    adata = _with_plates(counts_300, {"p1": 150, "p2": 150})
    X = adata.X.toarray()
    X[150:] = np.eye(150, 40)  # one detected gene per cell: min_genes=2 removes them all
    _set_counts(adata, X)
    with pytest.raises(InputError, match=r"batch 'p2' has 0 cell\(s\) left of 150 read"):
        preprocess(adata, batch_key="batch", min_genes=2, n_top_genes=None)


def test_a_batch_smaller_than_a_minibatch_warns_with_its_count(counts_300):
    adata = _with_plates(counts_300, {"p1": 180, "p2": 100, "p3": 20})
    with pytest.warns(UserWarning) as caught:
        preprocess(adata, batch_key="batch", n_top_genes=None)
    messages = [str(w.message) for w in caught if "minibatch" in str(w.message)]
    assert len(messages) == 2
    assert "batch 'p2' has only 100 cells, fewer than one minibatch (128 cells)" in messages[0]
    assert "batch 'p3' has only 20 cells" in messages[1]
    assert adata.uns["scvae"]["preprocess"]["batch_cells"] == {"p1": 180, "p2": 100, "p3": 20}


@needs_skmisc
@pytest.mark.filterwarnings("ignore:.*fewer than one minibatch")
def test_a_batch_whose_variance_trend_fails_is_named(shared_data):
    # 100 shallow Kang cells: scikit-misc's loess is singular on their few distinct means.
    adata = read_dataset(shared_data / "kang_ifnb_2conditions_counts.h5ad", batch_key="condition")
    stimulated = np.flatnonzero(adata.obs["batch"] == "stimulated")
    drop = np.random.default_rng(0).choice(stimulated, stimulated.size - 100, replace=False)
    adata = adata[~np.isin(np.arange(adata.n_obs), drop)].copy()
    with pytest.raises(
        InputError,
        match=r"kang_ifnb_2conditions_counts\.h5ad: highly variable genes \(seurat_v3\): the "
        r"loess fit of variance on mean failed in batch 'stimulated' \(100 cells, median [\d,]+ "
        r"counts per cell: .*\)\. The fit needs more cells",
    ):
        preprocess(adata, batch_key="batch")


def test_covariates_are_categorical_and_recorded(counts_300, tmp_path):
    adata = _with_plates(counts_300, {"p1": 150, "p2": 150})
    adata.obs["donor"] = np.tile([3, 4, 5], 100)
    X = adata.X.toarray()
    X[np.arange(300) % 3 == 2] = 0  # the cells of donor 5 have no counts and are dropped
    _set_counts(adata, X)
    with pytest.warns(UserWarning, match="minibatch"):
        preprocess(adata, batch_key="batch", covariate_keys=["donor"], n_top_genes=None)
    assert list(adata.obs["donor"].cat.categories) == ["3", "4"]
    write_h5ad(adata, tmp_path / "out.h5ad")
    back = anndata.read_h5ad(tmp_path / "out.h5ad")
    record = back.uns["scvae"]["preprocess"]
    assert record["batch_key"] == "batch" and list(record["covariate_keys"]) == ["donor"]
    assert isinstance(back.obs["batch"].dtype, pd.CategoricalDtype)


def test_no_batches_records_no_batch_key(small_counts):
    preprocess(small_counts, n_top_genes=None)
    record = small_counts.uns["scvae"]["preprocess"]
    assert "batch_key" not in record and record["covariate_keys"] == []


def test_bad_batch_and_covariate_columns(counts_300):
    with pytest.raises(InputError, match=r"plates\.h5ad: batch_key 'batch' is not an obs column"):
        preprocess(counts_300, batch_key="batch")
    counts_300.obs["donor"] = np.where(np.arange(300) == 4, None, "d1")
    with pytest.raises(InputError, match=r"covariate 'donor': 1 of 300 cells .*cell 'c4'"):
        preprocess(counts_300, covariate_keys=["donor"])
    assert counts_300.shape == (300, 40)


@pytest.mark.parametrize("copy", [True, False])
def test_counts_that_went_through_float32_are_filtered_rounded(small_counts, copy):
    want = pd.DataFrame(
        small_counts.X.toarray(), index=small_counts.obs_names, columns=small_counts.var_names
    )
    X = small_counts.X.copy()
    X.data = np.nextafter(X.data, np.float32(np.inf))  # one float32 step above each count
    small_counts.X = X
    with pytest.warns(UserWarning, match=rf"rounded {X.nnz} value\(s\)"):
        out = preprocess(small_counts, n_top_genes=None, copy=copy)
    result = out if copy else small_counts
    kept = want.loc[result.obs_names, result.var_names].to_numpy()
    np.testing.assert_array_equal(result.X.toarray(), kept)
    np.testing.assert_array_equal(result.layers["counts"].toarray(), kept)
    if copy:  # the caller's AnnData keeps its values
        assert small_counts.X is X and (X.data != np.round(X.data)).all()
