"""Baselines: PCA of the normalized counts, Harmony on it, scVI when installed."""

from __future__ import annotations

import importlib.util
import sys
import types

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from scvae import baseline
from scvae.errors import InputError
from scvae.stages.baseline import run_baseline
from scvae.workflow_runs import HARMONY_N_COMPONENTS

N_CELLS = 600  # cells of the pbmc_counts fixture
HAS_SCVI = importlib.util.find_spec("scvi") is not None


def test_pca_embedding_leaves_input_untouched(pbmc_counts):
    before = pbmc_counts.X.copy()
    emb = baseline.pca_embedding(pbmc_counts, n_components=5)
    assert emb.shape == (N_CELLS, 5)
    assert emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert (pbmc_counts.X != before).nnz == 0
    assert "X_pca" not in pbmc_counts.obsm
    assert "log1p" not in pbmc_counts.uns


def test_pca_normalizes_to_the_median_library_like_scanpy(pbmc_counts):
    import scanpy as sc

    median = baseline.median_library_size(pbmc_counts)
    totals = np.asarray(pbmc_counts.X.sum(axis=1)).ravel()
    assert median == float(np.median(totals))
    # scanpy's own default (target_sum=None) is the median: the embeddings agree.
    ref = pbmc_counts.copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    sc.pp.pca(ref, n_comps=5, random_state=0)
    emb = baseline.pca_embedding(pbmc_counts, n_components=5)
    assert np.allclose(np.abs(emb), np.abs(ref.obsm["X_pca"]), atol=1e-3)
    # ... and differ from a fixed 1e4 per cell.
    fixed = baseline.pca_embedding(pbmc_counts, n_components=5, target_sum=1e4)
    assert not np.allclose(np.abs(emb), np.abs(fixed), atol=1e-3)


def test_baseline_cli_target_sum(pbmc_counts, tmp_path):
    from scvae import cli

    src, base = tmp_path / "pre.h5ad", tmp_path / "pca10.h5ad"
    pbmc_counts.write_h5ad(src)
    args = ["baseline", "--input", str(src), "--output", str(base), "--method", "pca"]
    cli.main([*args, "--n-components", "10", "--target-sum", "10000"])
    written = ad.read_h5ad(base)
    assert written.uns["scvae"]["baseline"]["target_sum"] == 10000.0
    fixed = baseline.pca_embedding(pbmc_counts, n_components=10, target_sum=1e4)
    np.testing.assert_allclose(written.obsm["X_scvae"], fixed, rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit):
        cli.main([*args, "--target-sum", "-3"])
    assert baseline.parse_target_sum("median") is None
    assert baseline.parse_target_sum(1e4) == 10000.0
    for bad in ("mean", 0, -3):
        with pytest.raises(ValueError, match="median"):
            baseline.parse_target_sum(bad)


def test_unavailable_scvi_baseline_is_written_without_an_embedding(
    pbmc_counts, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "scvi", None)  # makes `import scvi` raise ImportError
    with pytest.raises(baseline.BaselineUnavailable, match="scvi-tools"):
        baseline.scvi_embedding(pbmc_counts)
    assert issubclass(baseline.BaselineUnavailable, ImportError)

    src = tmp_path / "pre.h5ad"
    small = pbmc_counts[:50].copy()
    small.obsm["X_scvae"] = np.zeros((50, 2))  # stale model output must not survive
    small.write_h5ad(src)
    base = tmp_path / "scvi.h5ad"
    rec = run_baseline(src, base, method="scvi", max_epochs=25)
    assert rec["status"] == "unavailable"
    assert rec["max_epochs"] == 25  # what was asked for, as the comparison's epochs
    assert "n_components" not in rec  # scvi-tools' default size is unknown without it
    written = ad.read_h5ad(base)
    assert "X_scvae" not in written.obsm
    assert "scvi-tools" in written.uns["scvae"]["baseline"]["unavailable"]


def test_unknown_baseline_method(tmp_path):
    with pytest.raises(InputError, match="unknown baseline"):
        run_baseline(tmp_path / "x.h5ad", tmp_path / "y.h5ad", method="umap", n_components=2)


def test_too_few_cells_for_pca_name_the_file(tmp_path):
    tiny = ad.AnnData(X=sp.csr_matrix(np.arange(1, 31, dtype=np.float32).reshape(3, 10)))
    tiny.layers["counts"] = tiny.X.copy()
    tiny.obsm["X_scvae"] = np.random.default_rng(0).normal(size=(3, 2))
    path = tmp_path / "latent.h5ad"
    tiny.write_h5ad(path)
    with pytest.raises(InputError, match=rf"^{path}: n_components must be in \[1, 2\]"):
        run_baseline(path, tmp_path / "pca.h5ad", method="pca", n_components=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.h5ad"]


def _with_batches(adata: ad.AnnData, batch: np.ndarray, covariates: dict | None = None):
    """``adata`` with ``obs["batch"]`` and covariates recorded as preprocessing does."""
    out = adata.copy()
    out.obs["batch"] = pd.Categorical(np.asarray(batch).astype(str))
    for key, values in (covariates or {}).items():
        out.obs[key] = pd.Categorical(np.asarray(values).astype(str))
    out.uns["scvae"] = {
        "preprocess": {"batch_key": "batch", "covariate_keys": list(covariates or {})}
    }
    return out


@pytest.fixture(scope="module")
def cellbench_hvg(shared_data) -> ad.AnnData:
    """CellBench (5 plates, 5 cell lines) on 2,000 batch-aware seurat_v3 genes.

    The preprocessed layout of a dataset with ``batch_key: batch`` and
    ``covariates: [technology]``: counts in ``X`` and ``layers["counts"]``,
    ``obs["batch"]``, and the keys in ``uns["scvae"]["preprocess"]``.
    """
    import scanpy as sc

    path = shared_data / "cellbench_5batches_counts.h5ad"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    raw = ad.read_h5ad(path)
    raw.X = sp.csr_matrix(raw.X, dtype=np.float32)
    sc.pp.highly_variable_genes(raw, flavor="seurat_v3", n_top_genes=2000, batch_key="batch")
    adata = raw[:, raw.var["highly_variable"]].copy()
    adata.layers["counts"] = adata.X.copy()
    return _with_batches(
        adata, adata.obs["batch"], {"technology": adata.obs["technology"].to_numpy()}
    )


def _knn_accuracy(embedding: np.ndarray, labels: np.ndarray) -> float:
    """5-fold accuracy of a 15-nearest-neighbour classifier of ``labels``."""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(15), embedding, labels, cv=folds).mean())


def test_harmony_removes_the_plates_of_cellbench_and_keeps_the_cell_lines(cellbench_hvg):
    pcs = baseline.pca_embedding(cellbench_hvg, n_components=HARMONY_N_COMPONENTS)
    corrected = baseline.harmony_embedding(cellbench_hvg, batch_keys=["batch"], seed=0)
    assert corrected.shape == (cellbench_hvg.n_obs, HARMONY_N_COMPONENTS)
    assert corrected.dtype == np.float32
    plate = cellbench_hvg.obs["batch"].to_numpy()
    line = cellbench_hvg.obs["cell_line"].astype(str).to_numpy()
    # Measured: plate accuracy 0.71 -> 0.32 (a majority guess: 0.22), cell line 0.98 -> 0.98.
    before, after = _knn_accuracy(pcs, plate), _knn_accuracy(corrected, plate)
    assert before > 0.6
    assert after < 0.45
    assert _knn_accuracy(corrected, line) > 0.95


def test_harmony_is_seeded(cellbench_hvg):
    first = baseline.harmony_embedding(cellbench_hvg, batch_keys=["batch"], n_components=20, seed=3)
    again = baseline.harmony_embedding(cellbench_hvg, batch_keys=["batch"], n_components=20, seed=3)
    other = baseline.harmony_embedding(cellbench_hvg, batch_keys=["batch"], n_components=20, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)  # the seed reaches Harmony's k-means


def test_harmony_baseline_corrects_the_batch_and_the_covariates(cellbench_hvg, tmp_path):
    src, out = tmp_path / "preprocessed.h5ad", tmp_path / "harmony.h5ad"
    cellbench_hvg.write_h5ad(src)
    rec = run_baseline(src, out, method="harmony", n_components=20, seed=1)
    assert rec["status"] == "ok"
    assert rec["batch_keys"] == ["batch", "technology"]
    assert rec["n_components"] == 20
    assert rec["target_sum"] == baseline.median_library_size(cellbench_hvg)
    written = ad.read_h5ad(out)
    assert written.uns["scvae"]["baseline"]["method"] == "harmony"
    assert list(written.uns["scvae"]["baseline"]["batch_keys"]) == ["batch", "technology"]
    assert written.uns["scvae"]["preprocess"]["batch_key"] == "batch"  # carried unchanged
    expected = baseline.harmony_embedding(
        cellbench_hvg, batch_keys=["batch", "technology"], n_components=20, seed=1
    )
    np.testing.assert_array_equal(written.obsm["X_scvae"], expected)


def test_harmony_on_data_without_batches_is_an_error_naming_the_file(pbmc_counts, tmp_path):
    src = tmp_path / "preprocessed.h5ad"
    pbmc_counts.write_h5ad(src)
    with pytest.raises(InputError, match=rf"^{src}: Harmony needs batches"):
        run_baseline(src, tmp_path / "harmony.h5ad", method="harmony")
    assert not (tmp_path / "harmony.h5ad").exists()


def test_harmony_cli(pbmc_counts, tmp_path):
    from scvae import cli

    rng = np.random.default_rng(0)
    data = _with_batches(pbmc_counts, rng.choice(["a", "b"], pbmc_counts.n_obs))
    src, out = tmp_path / "pre.h5ad", tmp_path / "harmony.h5ad"
    data.write_h5ad(src)
    args = ["baseline", "--input", str(src), "--output", str(out), "--method", "harmony"]
    assert cli.main([*args, "--n-components", "8", "--seed", "2", "--threads", "1"]) == 0
    rec = ad.read_h5ad(out).uns["scvae"]["baseline"]
    assert (rec["method"], rec["n_components"], rec["seed"]) == ("harmony", 8, 2)
    assert ad.read_h5ad(out).obsm["X_scvae"].shape == (pbmc_counts.n_obs, 8)


def test_unavailable_harmony_is_written_without_an_embedding(small_counts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "harmonypy", None)
    src = tmp_path / "pre.h5ad"
    _with_batches(small_counts, np.repeat(["a", "b"], 30)).write_h5ad(src)
    rec = run_baseline(src, tmp_path / "h.h5ad", method="harmony", n_components=5)
    assert rec["status"] == "unavailable"
    assert "harmonypy" in rec["unavailable"]
    assert "X_scvae" not in ad.read_h5ad(tmp_path / "h.h5ad").obsm


def test_batch_columns_read_the_preprocessing_record(small_counts):
    assert baseline.batch_columns(small_counts) == (None, [])
    data = _with_batches(small_counts, np.repeat(["a", "b"], 30), {"donor": np.arange(60) % 3})
    assert baseline.batch_columns(data) == ("batch", ["donor"])
    # After an h5ad round trip the keys are arrays; None and NaN mean no batches.
    data.uns["scvae"]["preprocess"]["covariate_keys"] = np.array(["donor"], dtype=object)
    assert baseline.batch_columns(data) == ("batch", ["donor"])
    for none in (None, float("nan"), ""):
        data.uns["scvae"]["preprocess"]["batch_key"] = none
        assert baseline.batch_columns(data)[0] is None
    data.uns["scvae"]["preprocess"] = {"batch_key": "plate", "covariate_keys": []}
    with pytest.raises(InputError, match=r"\['plate'\].*columns: \["):
        baseline.batch_columns(data)


class _FakeSCVI:
    """Stands in for scvi.model.SCVI: records how the baseline calls scvi-tools."""

    calls: dict = {}

    def __init__(self, adata, **kwargs):
        self.adata = adata
        type(self).calls["init"] = kwargs
        n_latent = kwargs.get("n_latent", 10)
        self.module = types.SimpleNamespace(n_latent=n_latent, gene_likelihood="zinb")

    @classmethod
    def setup_anndata(cls, adata, **kwargs):
        cls.calls["setup"] = {"obs": list(adata.obs.columns), **kwargs}

    def train(self, max_epochs=None, **kwargs):
        type(self).calls["train"] = {"max_epochs": max_epochs, **kwargs}
        self.history = {"elbo_train": [0.0] * (max_epochs or 400)}

    def get_latent_representation(self):
        return np.zeros((self.adata.n_obs, self.module.n_latent))


def test_scvi_gets_its_own_defaults_and_the_batch_and_covariates(small_counts, monkeypatch):
    fake = types.ModuleType("scvi")
    fake.settings = types.SimpleNamespace(seed=None, num_threads=None)
    fake.model = types.SimpleNamespace(SCVI=_FakeSCVI)
    monkeypatch.setitem(sys.modules, "scvi", fake)
    monkeypatch.setattr(_FakeSCVI, "calls", {})
    data = _with_batches(small_counts, np.repeat(["a", "b"], 30), {"donor": np.arange(60) % 3})

    emb, used = baseline.scvi_embedding(
        data, batch_key="batch", covariate_keys=["donor"], seed=7, n_threads=2
    )
    calls = _FakeSCVI.calls
    assert calls["init"] == {}  # no n_latent, no gene_likelihood: scvi-tools' defaults
    assert calls["setup"] == {
        "obs": ["batch", "donor"],
        "batch_key": "batch",
        "categorical_covariate_keys": ["donor"],
    }
    assert calls["train"]["max_epochs"] is None  # scvi-tools' epochs rule
    assert (fake.settings.seed, fake.settings.num_threads) == (7, 2)
    assert used == {
        "n_latent": 10,
        "gene_likelihood": "zinb",
        "max_epochs": 400,
        "batch_key": "batch",
        "covariate_keys": ["donor"],
    }
    assert emb.shape == (60, 10) and emb.dtype == np.float32

    _, used = baseline.scvi_embedding(small_counts, max_epochs=25)
    assert calls["setup"] == {"obs": [], "batch_key": None, "categorical_covariate_keys": None}
    assert used == {"n_latent": 10, "gene_likelihood": "zinb", "max_epochs": 25}


@pytest.mark.skipif(not HAS_SCVI, reason="scvi-tools is not installed")
def test_scvi_baseline_records_the_settings_it_ran_with(small_counts, tmp_path):
    src, out = tmp_path / "pre.h5ad", tmp_path / "scvi_e2.h5ad"
    _with_batches(small_counts, np.repeat(["a", "b"], 30)).write_h5ad(src)
    rec = run_baseline(src, out, method="scvi", max_epochs=2, seed=0)
    assert rec["status"] == "ok"
    assert rec["gene_likelihood"] == "zinb"
    assert rec["n_latent"] == rec["n_components"] == 10
    assert rec["max_epochs"] == 2
    assert rec["batch_key"] == "batch"
    written = ad.read_h5ad(out)
    assert written.obsm["X_scvae"].shape == (60, 10)
    assert written.uns["scvae"]["baseline"]["batch_key"] == "batch"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SCVI, reason="scvi-tools is not installed")
def test_scvi_baseline_runs_scvi_tools_epochs_rule(small_counts, tmp_path):
    src, out = tmp_path / "pre.h5ad", tmp_path / "scvi.h5ad"
    small_counts.write_h5ad(src)
    rec = run_baseline(src, out, method="scvi", seed=0)
    assert rec["max_epochs"] == 400  # min(400, 20000 * 400 / 60 cells)
    assert "batch_key" not in rec
