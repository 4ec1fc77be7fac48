"""Batch information in z: the kNN accuracy against scikit-learn, its chance level, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from scvae.diagnostics.batch import batch_in_latent


def _blobs(shift, n=(120, 60, 60), seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(sum(n), 4))
    batches = np.repeat(["a", "b", "c"], n)
    for i, name in enumerate("abc"):
        z[batches == name, 0] += shift * i
    return z, batches


def test_accuracy_is_scikit_learns_cross_validated_knn():
    z, batches = _blobs(1.0)
    got = batch_in_latent(z, batches, n_neighbors=7, n_folds=4, seed=3)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=3)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=7), z, batches, cv=folds)
    # Equal folds of equal size: the mean of the fold scores is the pooled accuracy.
    assert got["accuracy"] == pytest.approx(scores.mean())
    assert got["chance"] == pytest.approx(0.5)  # the largest batch holds half the cells
    assert (got["n_batches"], got["n_cells"], got["n_neighbors"], got["n_folds"]) == (3, 240, 7, 4)


def test_separated_batches_read_at_one_and_mixed_ones_near_chance():
    separated = batch_in_latent(*_blobs(20.0))
    mixed = batch_in_latent(*_blobs(0.0))
    assert separated["accuracy"] == 1.0
    assert abs(mixed["accuracy"] - mixed["chance"]) < 0.1


def test_one_batch_has_no_accuracy_and_tiny_batches_reduce_the_folds():
    z = np.random.default_rng(0).normal(size=(20, 2))
    one = batch_in_latent(z, ["x"] * 20)
    assert math.isnan(one["accuracy"]) and one["chance"] == 1.0 and one["n_batches"] == 1
    small = batch_in_latent(z, ["x"] * 17 + ["y"] * 3)
    assert small["n_folds"] == 3 and 0 <= small["accuracy"] <= 1
    single = batch_in_latent(z, ["x"] * 19 + ["y"])
    assert single["n_folds"] == 5 and small["n_neighbors"] <= 15


def test_the_same_seed_gives_the_same_accuracy():
    z, batches = _blobs(0.5)
    assert batch_in_latent(z, batches, seed=1) == batch_in_latent(z, batches, seed=1)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one batch per cell"):
        batch_in_latent(np.zeros((5, 2)), ["a"] * 4)
