"""Where the counts are (the one accessor), and minibatch loaders: the block shuffle."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

from scvae.data.h5ad import read_h5ad
from scvae.data.loaders import (
    CountBatches,
    counts_data,
    counts_layer,
    counts_matrix,
    counts_source,
)
from scvae.data.ondisk import H5CSR


def test_the_counts_are_the_layer_when_present_else_x():
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    plain = ad.AnnData(X=X)
    layered = ad.AnnData(X=X / 2, layers={"counts": sparse.csr_matrix(X), "raw": X + 1})
    assert counts_layer(layered) == "counts" and counts_source(layered) == "layers['counts']"
    assert counts_layer(plain) is None and counts_source(plain) == "X"
    assert (
        counts_layer(layered, "raw") == "raw" and counts_source(layered, "raw") == "layers['raw']"
    )
    assert counts_layer(layered, "absent") is None and counts_layer(layered, None) is None
    assert counts_data(layered) is layered.layers["counts"] and counts_data(plain) is plain.X
    assert counts_data(layered, None) is layered.X  # None asks for X
    assert counts_data(ad.AnnData(obs={"a": [1, 2]})) is None
    csr = counts_matrix(layered)
    assert sparse.isspmatrix_csr(csr) and np.array_equal(csr.toarray(), X)
    assert np.array_equal(counts_matrix(plain).toarray(), X)


def test_backed_counts_stay_on_disk(h5_counts):
    path, a = h5_counts
    backed = read_h5ad(path, backed=True)
    assert counts_source(backed) == "layers['counts']"
    X = counts_matrix(backed)
    assert isinstance(X, H5CSR)
    assert np.array_equal(X[np.arange(5)].toarray(), a.layers["counts"][:5].toarray())


def test_block_shuffle_covers_every_row_once_and_reads_windows(h5_counts):
    path, a = h5_counts
    X = H5CSR.open(path)
    idx = np.sort(np.random.default_rng(0).choice(700, 600, replace=False))
    loader = CountBatches(X, idx, 50, shuffle=True, seed=1, block_size=40, window_blocks=3)
    batches = loader.batches(0)
    assert np.array_equal(np.sort(np.concatenate(batches)), idx)
    assert not np.array_equal(np.concatenate(batches), idx)
    assert [b.tolist() for b in batches] != [b.tolist() for b in loader.batches(1)]
    dense = list(loader.epoch(0))
    mem = CountBatches(a.X, idx, 50, shuffle=True, seed=1, block_size=40, window_blocks=3)
    for (got, codes), (want, _) in zip(dense, mem.epoch(0), strict=True):
        assert torch.equal(got, want)
        assert codes is None
    # Without block_size the order is the in-memory loader's, as before.
    plain = CountBatches(X, idx, 50, shuffle=True, seed=1)
    assert [b.tolist() for b in plain.batches(0)] == [
        b.tolist() for b in CountBatches(a.X, idx, 50, shuffle=True, seed=1).batches(0)
    ]


def test_covariate_codes_travel_with_their_rows(h5_counts):
    path, a = h5_counts
    idx = np.arange(0, 700, 3)
    codes = np.stack([np.arange(700) % 4, np.arange(700) // 100], 1)
    for X, block in ((a.X, None), (H5CSR.open(path), 40)):
        loader = CountBatches(X, idx, 32, shuffle=True, seed=2, block_size=block, covariates=codes)
        for rows, (x, c) in zip(loader.batches(0), loader.epoch(0), strict=True):
            assert c.dtype == torch.int64 and torch.equal(c, torch.as_tensor(codes[rows]))
            assert torch.equal(x, torch.as_tensor(a.X[rows].toarray()))
    with pytest.raises(ValueError, match="one row per row of the counts"):
        CountBatches(a.X, idx, 32, covariates=codes[:10])
    with pytest.raises(ValueError, match="non-negative integer codes"):
        CountBatches(a.X, idx, 32, covariates=codes - 1)
