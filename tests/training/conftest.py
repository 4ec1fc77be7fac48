"""Fixtures of the training tests: a small real data set and a clean Pyro param store."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pyro
import pytest
from scipy import sparse


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def pbmc_small(shared_data) -> anndata.AnnData:
    """400 cells x 300 genes of the real PBMC 4k counts, with labels."""
    with h5py.File(shared_data / "pbmc4k_top2000.h5") as f:
        X = np.asarray(f["X"][:400, :300], dtype=np.float32)
        y = np.asarray(f["Y"][:400]).astype(int)
    keep = X.sum(1) > 0
    X = sparse.csr_matrix(X[keep])
    adata = anndata.AnnData(X)
    adata.layers["counts"] = X.copy()
    adata.obs["label"] = y[keep].astype(str)
    return adata


def two_batch_counts(n: int = 240, n_genes: int = 40, seed: int = 1) -> anndata.AnnData:
    """Synthetic clustered counts in two batches: a third of the genes x4 in batch "b".

    Also a second covariate, ``obs["donor"]`` (3 categories), and the counts in
    ``layers["counts"]``.
    """
    import pandas as pd

    from scvae.data.synthetic import synthetic_counts

    adata = synthetic_counts(n, n_genes, seed=seed)
    rng = np.random.default_rng(seed)
    batch = np.array(["a", "b"])[np.arange(n) % 2]
    X = adata.X.toarray()
    genes = rng.choice(n_genes, n_genes // 3, replace=False)
    X[np.ix_(batch == "b", genes)] *= 4
    adata.X = sparse.csr_matrix(X)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["batch"] = pd.Categorical(batch)
    adata.obs["donor"] = pd.Categorical(np.array(["d1", "d2", "d3"])[rng.integers(0, 3, n)])
    return adata


@pytest.fixture
def two_batches() -> anndata.AnnData:
    """:func:`two_batch_counts` with its defaults (240 cells, 40 genes)."""
    return two_batch_counts()
