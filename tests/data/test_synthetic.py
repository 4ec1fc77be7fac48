"""Synthetic counts: the file, the seed and recoverable clusters."""

from __future__ import annotations

import anndata
import numpy as np
from scipy import sparse

from scvae.data.synthetic import synthetic_counts, write_synthetic_h5ad


def test_synthetic_file_shape_counts_labels_and_seed(tmp_path):
    path = write_synthetic_h5ad(tmp_path / "s.h5ad", 5000, 60, seed=7)
    a = anndata.read_h5ad(path)
    assert a.shape == (5000, 60)
    assert sparse.issparse(a.X) and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() > 0
    assert a.obs["label"].nunique() == 10
    assert a.X.indptr.dtype == a.X.indices.dtype
    # Same seed, same file; the in-memory generator draws the same counts.
    again = synthetic_counts(5000, 60, seed=7)
    assert (again.X != a.X).nnz == 0
    assert (again.obs["label"].to_numpy() == a.obs["label"].to_numpy()).all()
    assert (synthetic_counts(5000, 60, seed=8).X != a.X).nnz > 0
    # The first cells of a larger file are a smaller file.
    assert (synthetic_counts(100, 60, seed=7).X != a.X[:100]).nnz == 0
    backed = anndata.read_h5ad(path, backed="r")
    rows = np.array([0, 17, 4999])
    assert (backed.X[rows] != a.X[rows]).nnz == 0


def test_synthetic_clusters_are_recoverable():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    from scvae.data.synthetic import SyntheticParams

    a = synthetic_counts(1500, 300, seed=0, params=SyntheticParams(n_clusters=5, de_fraction=0.3))
    X = a.X.toarray()
    X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    pcs = PCA(10, random_state=0).fit_transform(X)
    pred = KMeans(5, n_init=4, random_state=0).fit_predict(pcs)
    assert adjusted_rand_score(a.obs["label"], pred) > 0.8
