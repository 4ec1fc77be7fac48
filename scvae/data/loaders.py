"""Where the counts of an AnnData are, and minibatches of dense counts cut from them.

:func:`counts_layer` is the one place that decides where the raw counts of an AnnData
are (``layers["counts"]`` when present, else ``X``); :func:`counts_source`,
:func:`counts_data` and :func:`counts_matrix` name and read them by it.
:class:`CountBatches` cuts minibatches from the counts, one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset

from scvae.data.ondisk import H5CSR, is_ondisk

if TYPE_CHECKING:
    import torch

# torch is imported where batches become tensors: the accessors below serve light
# modules too (the QC figure, the scIB metrics), which should not load it.

COUNTS_LAYER = "counts"
"""The layer that holds the raw counts, by the scverse convention (else they are in ``X``)."""

BLOCK_SIZE = 256
"""Rows per block of the block shuffle that :func:`scvae.train` uses for on-disk counts."""
WINDOW_BLOCKS = 32
"""Blocks per window of that block shuffle (8,192 rows are mixed and read at once)."""


class CountBatches:
    """Iterate over minibatches of rows of a CSR count matrix as dense tensors.

    Only one batch is ever dense: the full matrix stays sparse (or on disk, for any
    row-sliceable matrix such as an h5py-backed CSR). Each batch comes with the integer
    codes of its cells' covariates (the batch and other categorical covariates of a
    conditional model), or None when there are none.

    Parameters
    ----------
    X
        Cells x genes counts supporting row indexing with a sorted integer array.
    indices
        The rows this loader draws from (e.g. the training split).
    batch_size
        Cells per batch; capped at ``len(indices)``.
    shuffle
        Draw a new permutation each epoch, from a generator seeded by ``(seed, epoch)`` so
        that a resumed run sees the same batches as an uninterrupted one.
    seed
        Seed of the permutation.
    drop_singleton
        Merge a last batch of one cell into the previous one: batch normalization cannot
        use a batch of one.
    block_size
        Shuffle by blocks (for counts on disk): the rows of ``indices`` are cut into
        blocks of ``block_size`` consecutive ones, the blocks are visited in random order,
        and the rows of each window of ``window_blocks`` blocks are shuffled together
        before being cut into batches. None: every row is shuffled independently.
    window_blocks
        Blocks mixed per window of the block shuffle.
    covariates
        Integer codes of every row of ``X`` (cells x covariates, one column per
        covariate, the batch first), or None.

    Notes
    -----
    Matrices on disk (:class:`scvae.data.ondisk.H5CSR`) are read a window of batches at a
    time (about ``block_size * window_blocks`` rows, one read per run of consecutive
    rows), so memory holds one window, never the matrix.

    The block shuffle trades randomness for reads: a minibatch holds cells from about
    ``window_blocks`` places of the file (twice that where it straddles two windows)
    instead of independent draws, so a file sorted by sample or cell type gives batches
    that are less mixed than a full shuffle (each epoch draws new blocks and a new mix);
    a full shuffle needs one disk read per cell. With 256-row blocks and 32-block
    windows an epoch of 10^6 cells takes ~8,000 HDF5 reads, and reading a batch of 128
    costs 0.5 ms instead of 9.7 ms with a per-row shuffle (a page-cached 2 GB file;
    far more on a cold or network disk; benchmarks/README.md).
    """

    def __init__(
        self,
        X,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_singleton: bool = True,
        block_size: int | None = None,
        window_blocks: int = WINDOW_BLOCKS,
        covariates: np.ndarray | None = None,
    ) -> None:
        self.X = X
        self.indices = np.asarray(indices)
        self.batch_size = max(1, min(int(batch_size), len(self.indices)))
        self.shuffle = shuffle
        self.seed = seed
        self.drop_singleton = drop_singleton
        self.block_size = None if block_size is None else max(1, int(block_size))
        self.window_blocks = max(1, int(window_blocks))
        self.covariates = None
        if covariates is not None:
            covariates = np.asarray(covariates)
            if covariates.ndim != 2 or covariates.shape[0] != X.shape[0]:
                raise ValueError(
                    f"covariates must be a (cells, covariates) array with one row per row of "
                    f"the counts ({X.shape[0]}), got shape {covariates.shape}"
                )
            if not np.issubdtype(covariates.dtype, np.integer) or (covariates < 0).any():
                raise ValueError("covariates must hold non-negative integer codes")
            self.covariates = covariates.astype(np.int64, copy=False)

    def batches(self, epoch: int = 0) -> list[np.ndarray]:
        """Row indices of each batch of ``epoch``."""
        idx = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            idx = rng.permutation(idx) if self.block_size is None else self._block_order(rng)
        cuts = list(range(0, len(idx), self.batch_size))
        # Sorted rows within a batch: the loss is a mean over cells, so order does not
        # matter, and on-disk (h5py) matrices need increasing indices.
        chunks = [np.sort(idx[c : c + self.batch_size]) for c in cuts]
        if self.drop_singleton and len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2] = np.sort(np.concatenate(chunks[-2:]))
            chunks.pop()
        return chunks

    def _block_order(self, rng: np.random.Generator) -> np.ndarray:
        """Rows of one epoch in block-shuffled order."""
        idx, b = self.indices, self.block_size
        blocks = rng.permutation(-(-len(idx) // b))
        windows = []
        for s in range(0, len(blocks), self.window_blocks):
            rows = [idx[k * b : (k + 1) * b] for k in blocks[s : s + self.window_blocks]]
            windows.append(rng.permutation(np.concatenate(rows)))
        return np.concatenate(windows) if windows else idx

    def __len__(self) -> int:
        return len(self.batches(0))

    @staticmethod
    def _tensor(block, device: torch.device | str) -> torch.Tensor:
        import torch  # on use: light modules read counts here without torch (see the top)

        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)

    def dense(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense float32 tensor of the given rows (sorted increasing)."""
        return self._tensor(self.X[rows], device)

    def codes(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Covariate codes of the given rows as a LongTensor (rows x covariates), or None."""
        if self.covariates is None:
            return None
        import torch  # on use, as in _tensor

        return torch.from_numpy(np.ascontiguousarray(self.covariates[rows])).to(device)

    def epoch(
        self, epoch: int = 0, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(x, codes)`` for each batch of ``epoch``.

        ``x`` is the dense float32 counts (cells x genes), ``codes`` the covariate codes
        of the same cells (cells x covariates, int64) or None without covariates.
        """
        batches = self.batches(epoch)
        if not is_ondisk(self.X):
            for rows in batches:
                yield self.dense(rows, device), self.codes(rows, device)
            return
        # On disk: one read for the rows of a window of batches, then slices in memory.
        window_rows = (self.block_size or BLOCK_SIZE) * self.window_blocks
        per_read = max(1, window_rows // self.batch_size)
        for s in range(0, len(batches), per_read):
            group = batches[s : s + per_read]
            rows = np.unique(np.concatenate(group))
            window = sp.csr_matrix(self.X[rows])
            for r in group:
                yield self._tensor(window[np.searchsorted(rows, r)], device), self.codes(r, device)


def counts_layer(adata: AnnData, layer: str | None = COUNTS_LAYER) -> str | None:
    """The layer that holds the raw counts of ``adata``, or None when they are in ``X``.

    Parameters
    ----------
    adata
        The data (in memory or backed).
    layer
        The layer asked for; None for ``X``.

    Returns
    -------
    str or None
        ``layer`` when ``adata`` has it, else None: the counts are in ``X``.
    """
    return layer if layer is not None and layer in adata.layers else None


def counts_source(adata: AnnData, layer: str | None = COUNTS_LAYER) -> str:
    """Where the raw counts of ``adata`` are, for messages and records.

    Parameters
    ----------
    adata
        The data.
    layer
        The layer asked for (see :func:`counts_layer`).

    Returns
    -------
    str
        ``"layers['counts']"`` (the layer found) or ``"X"``.
    """
    found = counts_layer(adata, layer)
    return "X" if found is None else f"layers[{found!r}]"


def counts_data(adata: AnnData, layer: str | None = COUNTS_LAYER) -> Any:
    """The raw counts of ``adata`` as stored: ``layers[layer]`` when present, else ``X``.

    Parameters
    ----------
    adata
        The data.
    layer
        The layer asked for (see :func:`counts_layer`).

    Returns
    -------
    Any
        The matrix as it is held: dense, sparse, a backed dataset, or None for an
        AnnData without ``X``. :func:`counts_matrix` gives it as CSR.
    """
    found = counts_layer(adata, layer)
    return adata.X if found is None else adata.layers[found]


def counts_matrix(adata: AnnData, layer: str | None = COUNTS_LAYER) -> sp.csr_matrix:
    """The raw counts of ``adata`` as CSR: ``layers[layer]`` when present, else ``X``.

    Counts on disk (a backed AnnData's CSR ``X`` or layer, see
    :func:`scvae.data.h5ad.read_h5ad`) stay there, as a :class:`scvae.data.ondisk.H5CSR`.
    """
    X = counts_data(adata, layer)
    if is_ondisk(X):
        return X
    if isinstance(X, CSRDataset):
        return H5CSR(X.group)
    if isinstance(X, CSCDataset):  # a backed CSC matrix cannot be read by rows
        X = X.to_memory()
    if not sp.issparse(X):
        X = sp.csr_matrix(X)
    return X.tocsr()
