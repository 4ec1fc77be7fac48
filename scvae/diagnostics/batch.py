"""Batch information left in the latent code: how well the batch can be read from z.

A conditional VAE hands the batch to the decoder, so the code need not carry it; an
unconditional one has to. :func:`batch_in_latent` measures what is left: the
cross-validated accuracy of a k-nearest-neighbour classifier that predicts each cell's
batch from its posterior mean, next to the chance level of always guessing the largest
batch. An accuracy near chance means z holds (locally) no batch information; near 1,
that the batches separate in z.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from scvae.module.tensors import ArrayLike

__all__ = ["batch_in_latent"]


def batch_in_latent(
    z: ArrayLike,
    batches: ArrayLike,
    *,
    n_neighbors: int = 15,
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-validated kNN accuracy of predicting the batch from the latent code.

    Each cell's batch is predicted by a majority vote of its ``n_neighbors`` nearest
    neighbours (Euclidean) among the cells of the other folds (scikit-learn's
    ``KNeighborsClassifier``, uniform weights), with ``n_folds`` folds stratified by
    batch and shuffled with ``seed``. Unlike the batch ASW of scIB (Luecken et al.
    2022), this needs no cell-type labels and reads only local neighbourhoods, which
    is what a kNN graph built on z would see.

    Parameters
    ----------
    z
        Latent codes (posterior means), shape (cells, n_latent).
    batches
        The batch of each cell (any labels), shape (cells,).
    n_neighbors
        Neighbours of the vote (fewer when a fold's training cells are fewer).
    n_folds
        Folds of the cross-validation (fewer when the smallest batch has fewer cells).
    seed
        Seed of the fold assignment.

    Returns
    -------
    dict
        ``accuracy`` (share of cells whose batch is predicted right; NaN with fewer than
        2 batches), ``chance`` (share of the largest batch: the accuracy of always
        guessing it), ``n_batches``, ``n_cells``, ``n_neighbors`` and ``n_folds``.
    """
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(batches).astype(str)
    if z.ndim != 2 or z.shape[0] != labels.shape[0]:
        raise ValueError(
            f"z must be (cells, n_latent) with one batch per cell, got {z.shape} and "
            f"{labels.shape[0]} batches"
        )
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n = len(labels)
    out: dict[str, Any] = {
        "accuracy": math.nan,
        "chance": float(counts.max() / n) if n else math.nan,
        "n_batches": len(counts),
        "n_cells": n,
        "n_neighbors": 0,
        "n_folds": 0,
    }
    if len(counts) < 2:
        return out
    folds = min(int(n_folds), int(counts.min()))
    if folds >= 2:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:  # a batch of one cell cannot be in every fold
        folds = min(int(n_folds), n)
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    # The smallest training set of a fold bounds the number of neighbours.
    k = max(1, min(int(n_neighbors), n - -(-n // folds)))
    predicted = cross_val_predict(KNeighborsClassifier(n_neighbors=k), z, codes, cv=splitter)
    out.update(accuracy=float((predicted == codes).mean()), n_neighbors=k, n_folds=folds)
    return out
