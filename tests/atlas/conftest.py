"""Fixtures of the atlas tests: a small grid config."""

from __future__ import annotations

import pytest


def _config(**atlas) -> dict:
    """A small atlas config; keyword arguments replace entries of its ``atlas`` section."""
    grid = {
        "datasets": {"a": {"path": "a.h5"}},
        "n_cells": 100,
        "base": {"max_epochs": 3},
        "sweep_seeds": [0],
        "seeds": [0, 1],
        "healthy": "healthy_variant",
        "mechanisms": {
            "kl_weight": {"knob": "beta", "values": [1, 8], "collapse": 8},
            "skip": {
                "points": {"none": {}, "ungated": {"skip": "ungated"}},
                "collapse": "ungated",
                "remedies": {"dropout": {"skip_dropout": 0.5}},
            },
        },
        "remedies": {"none": {}, "linear": {"kl_schedule": "linear", "warmup_fraction": 0.5}},
    }
    grid.update(atlas)
    return {
        "defaults": {"n_latent": 4, "max_epochs": 100},
        "variants": {"healthy_variant": {"free_bits": 0.5}},
        "atlas": grid,
    }


@pytest.fixture
def atlas_config():
    """Builder of a small atlas config: ``atlas_config(**entries of the atlas section)``."""
    return _config


def _record(
    stage: str, mechanism: str, point: str, remedy: str, order: int, seed: int, mi: float
) -> dict:
    """A run record with the scalar columns only; ``mi`` sets how healthy it is."""
    name = "healthy" if stage == "healthy" else f"{stage}.{mechanism}.{remedy}"
    if stage == "sweep":
        name = f"sweep.{mechanism}.{point}"
    ari = min(mi / 5, 0.9) + 0.01 * seed
    return {
        "dataset": "d",
        "stage": stage,
        "mechanism": mechanism,
        "point": point,
        "remedy": remedy,
        "order": order,
        "value": None,
        "name": name,
        "seed": seed,
        "n_cells": 100,
        "epochs": 2,
        "mi": mi,
        "mi_cap": 4.6,
        "kl_total": mi + 0.5,
        "kl_aggregate": 0.5,
        "active_units": 4 if mi > 0.5 else 0,
        "n_latent": 4,
        **{f"{m}_ari{s}": ari for m in ("kmeans", "leiden") for s in ("", "_sample")},
    }


@pytest.fixture
def small_records() -> list[dict]:
    """A sweep of two points, a collapse with no remedy and one remedy, the reference.

    Listed out of order (the reference first), as several jobs' files concatenate.
    """
    return [
        *(_record("healthy", "", "nb", "none", 0, s, 4.0) for s in (1, 0)),
        _record("sweep", "beta", "beta1", "none", 0, 0, 3.0),
        _record("sweep", "beta", "beta8", "none", 1, 0, 0.01),
        *(_record("remedy", "beta", "beta8", "none", 0, s, 0.02) for s in (0, 1)),
        *(_record("remedy", "beta", "beta8", "linear", 1, s, 3.9) for s in (0, 1)),
    ]
