"""Minibatches of dense counts cut from a sparse matrix, one batch at a time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch


class CountBatches:
    """Iterate over minibatches of rows of a CSR count matrix as dense tensors.

    Only one batch is ever dense: the full matrix stays sparse (or on disk, for any
    row-sliceable matrix such as an h5py-backed CSR).

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
    ) -> None:
        self.X = X
        self.indices = np.asarray(indices)
        self.batch_size = max(1, min(int(batch_size), len(self.indices)))
        self.shuffle = shuffle
        self.seed = seed
        self.drop_singleton = drop_singleton

    def batches(self, epoch: int = 0) -> list[np.ndarray]:
        """Row indices of each batch of ``epoch``."""
        idx = self.indices
        if self.shuffle:
            idx = np.random.default_rng([self.seed, epoch]).permutation(idx)
        cuts = list(range(0, len(idx), self.batch_size))
        # Sorted rows within a batch: the loss is a mean over cells, so order does not
        # matter, and on-disk (h5py) matrices need increasing indices.
        chunks = [np.sort(idx[c : c + self.batch_size]) for c in cuts]
        if self.drop_singleton and len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2] = np.sort(np.concatenate(chunks[-2:]))
            chunks.pop()
        return chunks

    def __len__(self) -> int:
        return len(self.batches(0))

    def dense(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense float32 tensor of the given rows (sorted increasing)."""
        block = self.X[rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)

    def epoch(self, epoch: int = 0, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """Yield the dense batches of ``epoch``."""
        for rows in self.batches(epoch):
            yield self.dense(rows, device)
