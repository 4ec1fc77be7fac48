"""Figures of the collapse diagnostics, from a dictionary read back from JSON."""

from __future__ import annotations

import math

import pytest

from scvae.diagnostics.suite import FIGURE_NAMES
from scvae.plotting.diagnostics import plot_diagnostics


def test_figures_take_json_nulls(tmp_path):
    diag = {
        "verdict": "partial collapse",
        "n_cells": 100,
        "mi": 0.8,
        "mi_cap": math.log(100),
        "kl_per_dim": [1.2, 0.0, 0.4],
        "mi_per_dim": [0.7, None, 0.1],
        "active_mask": [True, False, True],
        "sensitivity_per_dim": [30.0, 0.0, 1e-5],
        "jtj_eigenvalues": [30.0, 1e-5, 0.0],
        "kl_sensitivity_spearman": None,
    }
    paths = {name: tmp_path / f"{name}.png" for name in FIGURE_NAMES}
    plot_diagnostics(diag, paths)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths.values())
    with pytest.raises(ValueError, match="unknown figure"):
        plot_diagnostics(diag, {"umap": tmp_path / "u.png"})
