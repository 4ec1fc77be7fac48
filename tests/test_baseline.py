"""Baselines: PCA of the normalized counts, scVI when installed, written like a model."""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scvae import baseline
from scvae.errors import InputError

N_CELLS = 600  # cells of the pbmc_counts fixture


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


def test_baseline_variant_names():
    assert baseline.baseline_variant("pca", 10) == "pca10"
    assert baseline.parse_baseline_variant("pca50") == ("pca", 50)
    assert baseline.parse_baseline_variant("scvi10") == ("scvi", 10)
    assert baseline.parse_baseline_variant("scvi") == ("scvi", None)
    assert baseline.parse_baseline_variant("beta_vae") is None


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
    base = tmp_path / "scvi10.h5ad"
    rec = baseline.run_baseline(src, base, method="scvi", n_components=10)
    assert rec["status"] == "unavailable"
    written = ad.read_h5ad(base)
    assert "X_scvae" not in written.obsm
    assert "scvi-tools" in written.uns["scvae"]["baseline"]["unavailable"]


def test_unknown_baseline_method(tmp_path):
    with pytest.raises(InputError, match="unknown baseline"):
        baseline.run_baseline(
            tmp_path / "x.h5ad", tmp_path / "y.h5ad", method="umap", n_components=2
        )


def test_too_few_cells_for_pca_name_the_file(tmp_path):
    tiny = ad.AnnData(X=sp.csr_matrix(np.arange(1, 31, dtype=np.float32).reshape(3, 10)))
    tiny.layers["counts"] = tiny.X.copy()
    tiny.obsm["X_scvae"] = np.random.default_rng(0).normal(size=(3, 2))
    path = tmp_path / "latent.h5ad"
    tiny.write_h5ad(path)
    with pytest.raises(InputError, match=rf"^{path}: n_components must be in \[1, 2\]"):
        baseline.run_baseline(path, tmp_path / "pca.h5ad", method="pca", n_components=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.h5ad"]
