"""The shared preprocessing steps: decisions, record and errors, on plain arrays."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pandas as pd
import pytest

from scvae.errors import InputError
from scvae.preprocess.steps import (
    MIN_BATCH_CELLS,
    SMALL_BATCH_CELLS,
    FilterPlan,
    batch_sizes,
    check_batch_sizes,
    drop_cells_without_hvg_counts,
    drop_empty,
    failed_cell_filters,
    filter_cells,
    filter_genes,
    fit_variance_trend,
    hvg_fit_error,
    loess_message,
    record_hvg,
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


# ------------------------------------------------------------------------ batches


def test_batch_sizes_count_every_batch_among_the_kept_cells():
    batches = pd.Categorical(["a", "b", "a", "c", "a"], categories=["a", "b", "c", "d"])
    assert batch_sizes(batches) == {"a": 3, "b": 1, "c": 1, "d": 0}
    keep = np.array([True, False, True, True, False])
    assert batch_sizes(batches, keep) == {"a": 2, "b": 0, "c": 1, "d": 0}


def test_batch_size_thresholds():
    read = {"a": 500, "b": 500}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither an error nor a warning at the limits
        check_batch_sizes({"a": SMALL_BATCH_CELLS, "b": 300}, read, "f", "4")
        check_batch_sizes({"a": MIN_BATCH_CELLS, "b": 300}, read, "f", "6", warn=False)
    with pytest.warns(UserWarning, match=rf"f: batch 'a' has only {SMALL_BATCH_CELLS - 1} cells"):
        check_batch_sizes({"a": SMALL_BATCH_CELLS - 1, "b": 300}, read, "f", "4")
    with pytest.raises(
        InputError,
        match=rf"f: too few cells after step 4: batch 'a' has {MIN_BATCH_CELLS - 1} cell\(s\) "
        rf"left of 500 read; batch 'b' has 0 cell\(s\) left of 500 read\. Every batch needs at "
        rf"least {MIN_BATCH_CELLS} cells",
    ):
        check_batch_sizes({"a": MIN_BATCH_CELLS - 1, "b": 0}, read, "f", "4")


def test_record_hvg_notes_the_batches():
    plan = FilterPlan.start(4, 10, batches=pd.Categorical(["a", "b", "a", "b"]))
    record_hvg(plan, (4, 10), (4, 5), "f")
    assert plan.steps["5_highly_variable_genes"]["hvg_batches"] == 2
    plan = FilterPlan.start(4, 10)
    record_hvg(plan, (4, 10), (4, 5), "f")
    assert "hvg_batches" not in plan.steps["5_highly_variable_genes"]


def test_store_record_with_batches(small_counts):
    small_counts.obs["batch"] = pd.Categorical(np.repeat(["x", "y"], 30))
    store_record(
        small_counts,
        FilterPlan.start(60, 40),
        SETTINGS,
        batch_key="batch",
        covariate_keys=("cell_type",),
    )
    record = small_counts.uns["scvae"]["preprocess"]
    assert record["batch_key"] == "batch" and record["covariate_keys"] == ["cell_type"]
    assert record["batch_cells"] == {"x": 30, "y": 30}


def test_hvg_fit_error_and_loess_message():
    assert loess_message(ValueError(b"There are other near singularities as well. 0.09\n")) == (
        "There are other near singularities as well. 0.09"
    )
    err = hvg_fit_error("f.h5ad", {"p3": (40, 1234.0, "svddc failed in l2fit.")})
    assert str(err).startswith(
        "f.h5ad: highly variable genes (seurat_v3): the loess fit of variance on mean failed in "
        "batch 'p3' (40 cells, median 1,234 counts per cell: svddc failed in l2fit.)."
    )
    assert "all cells (40 cells" in str(hvg_fit_error("f", {None: (40, 10.0, "x")}))


@pytest.mark.skipif(importlib.util.find_spec("skmisc") is None, reason="needs scikit-misc")
def test_fit_variance_trend_fits_the_non_constant_genes():
    rng = np.random.default_rng(0)
    mean = 10 ** rng.uniform(-2, 2, 500)
    variance = mean + mean**2 / 3  # a negative binomial's trend
    variance[:5] = 0
    fitted = fit_variance_trend(mean, variance)
    assert (fitted[:5] == 0).all()
    np.testing.assert_allclose(fitted[5:], np.log10(variance[5:]), atol=0.05)
    with pytest.raises(ValueError):  # three distinct means cannot carry a quadratic loess
        fit_variance_trend(np.repeat([0.1, 0.2, 0.3], 100), np.repeat([0.1, 0.3, 0.5], 100))
