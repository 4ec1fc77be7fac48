"""Counts that stay on disk: H5CSR rows, subsets and row sums match scipy's."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from scvae.data.ondisk import H5CSR, Subset, row_sums


def test_h5csr_rows_match_scipy(h5_counts):
    path, a = h5_counts
    X = H5CSR.open(path, "layers/counts")
    assert X.shape == a.shape and X.nnz == a.X.nnz
    rng = np.random.default_rng(0)
    for rows in (
        np.arange(5),
        np.array([9, 3, 3, 699, 0]),
        np.sort(rng.choice(700, 90, replace=False)),
        rng.choice(700, 300),
        np.array([], dtype=int),
        np.array([-1, 2]),
        slice(100, 180),
        slice(None, None, 9),
    ):
        got, want = X[rows], a.X[rows]
        assert got.shape == want.shape and (got != want).nnz == 0
    assert np.array_equal(row_sums(X), row_sums(a.X))
    sub = Subset(X, np.array([1, 5, 8]), np.array([3, 0]))
    assert (sub[np.array([0, 2])] != a.X[[1, 8]][:, [3, 0]]).nnz == 0
    with pytest.raises(ValueError, match="CSR"):
        H5CSR(h5py.File(path)["obs"])
