"""The shared preprocessing steps: decisions, record and errors, on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from scvae.errors import InputError
from scvae.preprocess.steps import (
    FilterPlan,
    drop_cells_without_hvg_counts,
    drop_empty,
    failed_cell_filters,
    filter_cells,
    filter_genes,
    skip_hvg,
    store_record,
    validate_settings,
)

SETTINGS = validate_settings(
    min_genes=2,
    min_cells=2,
    min_counts=None,
    max_counts=100,
    max_mito_fraction=0.5,
    n_top_genes=None,
    mito_prefix="MT-",
)


def test_failed_cell_filters_in_order_and_without_mito():
    n_genes = np.array([1.0, 3.0, 3.0, 3.0])
    totals = np.array([5.0, 200.0, 10.0, 0.0])
    mito = np.array([0.0, 0.0, 9.0, 0.0])
    failed = failed_cell_filters(n_genes, totals, mito, SETTINGS)
    assert list(failed) == ["min_genes", "max_counts", "max_mito_fraction"]
    assert failed["min_genes"].tolist() == [True, False, False, False]
    assert failed["max_counts"].tolist() == [False, True, False, False]
    assert failed["max_mito_fraction"].tolist() == [False, False, True, False]  # 0/0 passes
    assert "max_mito_fraction" not in failed_cell_filters(n_genes, totals, None, SETTINGS)


def test_plan_records_every_step_and_stops_when_nothing_is_left():
    plan = FilterPlan.start(4, 3)
    drop_empty(plan, np.array([1, 1, 1, 0], bool), np.array([1, 1, 0], bool), SETTINGS, "f")
    assert plan.shape == (3, 2)
    assert plan.steps["1_drop_empty"] == {
        "cells": 3,
        "genes": 2,
        "cells_removed": 1,
        "genes_removed": 1,
    }
    filter_cells(plan, np.array([3, 3, 1, 0]), np.ones(4), np.zeros(4), SETTINGS, "f")
    assert plan.steps["2_filter_cells"]["mito_filter"] == "skipped: no genes start with 'MT-'"
    assert plan.steps["2_filter_cells"]["failed_min_genes"] == 1
    with pytest.raises(InputError, match="^f: no genes left after step 3_filter_genes"):
        filter_genes(plan, np.array([1, 1, 0]), SETTINGS, "f")


def test_hvg_steps_and_record(small_counts):
    plan = FilterPlan.start(60, 40)
    skip_hvg(plan, (60, 40), SETTINGS, "f")
    assert plan.steps["5_highly_variable_genes"]["hvg"] == "skipped: n_top_genes is None"
    assert plan.steps["6_drop_empty_after_hvg"]["cells_removed"] == 0
    with pytest.raises(InputError, match="no cell has counts in the 7 highly variable genes"):
        drop_cells_without_hvg_counts(plan, np.zeros(60, bool), 7, "f")
    store_record(small_counts, plan, SETTINGS)
    record = small_counts.uns["scvae"]["preprocess"]
    assert record["settings"]["min_counts"] == "none" and record["cells_in"] == 60
    assert record["steps"] is plan.steps and record["genes_out"] == 40
