"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

# The CI clone has ../shared beside the repository, as the development checkout does.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real single-cell files (../shared/data); skips the test if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (needs ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def small_counts() -> anndata.AnnData:
    """60 cells x 40 genes of Poisson counts with names, 3 'MT-' genes and labels."""
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(60, 40)).astype(np.float32)
    genes = [f"MT-{i}" if i < 3 else f"GENE{i}" for i in range(40)]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["B", "T", "NK"], 60))},
        index=[f"cell{i}" for i in range(60)],
    )
    adata = anndata.AnnData(X=sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture(scope="session")
def pbmc300_h5ad(tmp_path_factory) -> Path:
    """The `.test` data set (300 real PBMC cells) preprocessed with the default filters."""
    from scvae.stages.preprocess import run_preprocess

    folder = tmp_path_factory.mktemp("pbmc300")
    root = Path(__file__).resolve().parents[1]
    run_preprocess(
        root / ".test" / "data" / "pbmc300.h5",
        folder / "preprocessed.h5ad",
        folder / "qc.png",
    )
    return folder / "preprocessed.h5ad"


PBMC_CELLS = 600


@pytest.fixture(scope="module")
def pbmc_counts(shared_data: Path) -> anndata.AnnData:
    """600 random cells of PBMC 4k (top 2000 genes) in the preprocessing stage's layout."""
    import h5py

    path = shared_data / "pbmc4k_top2000.h5"
    if not path.is_file():
        pytest.skip(f"real data not found at {path} (needs the shared data folder)")
    with h5py.File(path) as f:
        n = f["X"].shape[0]
        idx = np.sort(np.random.default_rng(0).choice(n, PBMC_CELLS, replace=False))
        X = f["X"][idx]
        y = f["Y"][idx]
    counts = sparse.csr_matrix(X.astype(np.float32))
    adata = anndata.AnnData(
        X=counts,
        obs=pd.DataFrame(index=[f"cell{i}" for i in idx]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(X.shape[1])]),
    )
    adata.layers["counts"] = counts.copy()
    adata.obs["label"] = pd.Categorical(y.astype(int).astype(str))
    return adata


@pytest.fixture(scope="module")
def pbmc_pca(pbmc_counts: anndata.AnnData) -> anndata.AnnData:
    """:func:`pbmc_counts` with a 10-dimensional PCA baseline in ``obsm["X_scvae"]``."""
    from scvae.baseline import pca_embedding

    adata = pbmc_counts.copy()
    adata.obsm["X_scvae"] = pca_embedding(adata, n_components=10)
    return adata


@pytest.fixture
def h5_counts(tmp_path):
    """700 synthetic cells x 25 genes in an h5ad file (X and layers["counts"]): (path, AnnData)."""
    from scvae.data.synthetic import synthetic_counts

    a = synthetic_counts(700, 25, seed=2)
    a.layers["counts"] = a.X.copy()
    a.write_h5ad(tmp_path / "c.h5ad")
    return tmp_path / "c.h5ad", a


@pytest.fixture(scope="module")
def cellbench(shared_data: Path) -> anndata.AnnData:
    """CellBench (1,408 cells, 5 plates in obs["batch"]), its 500 most expressed genes."""
    adata = anndata.read_h5ad(shared_data / "cellbench_5batches_counts.h5ad")
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    top = np.sort(np.argsort(-np.asarray(X.sum(0)).ravel())[:500])
    adata = adata[:, top].copy()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    adata.layers["counts"] = adata.X.copy()
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
