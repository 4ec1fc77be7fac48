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
