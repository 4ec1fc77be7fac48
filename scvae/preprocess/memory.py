"""Preprocessing in memory: quality control, cell and gene filters, highly variable genes.

The steps are those a scanpy user expects (``sc.pp.calculate_qc_metrics``,
``filter_cells``/``filter_genes``-style thresholds, ``highly_variable_genes`` with the
``seurat_v3`` flavor), but ``X`` stays the raw counts: the models in scvae have a count
likelihood and normalize internally. Every step and its cell and gene numbers are
recorded in ``adata.uns["scvae"]["preprocess"]``. The steps themselves are decided in
:mod:`scvae.preprocess.steps`, shared with the streamed path for files too large for
memory (:mod:`scvae.preprocess.streamed`).

With batches (``batch_key``, usually the ``obs["batch"]`` that
:func:`scvae.data.batches.read_dataset` adds), every batch must keep enough cells, and
seurat_v3 ranks the genes within each batch (scanpy's ``batch_key``).

The defaults only remove what carries no information, so that already-filtered
matrices (such as the deep-clustering benchmark files, where a cell can have a
median of 35 counts) lose almost no cells. Raw Cell Ranger output needs stricter
thresholds, for example ``min_genes=200, max_mito_fraction=0.2``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from scvae.data.batches import batch_column, check_covariate_keys, covariate_column
from scvae.data.checks import check_counts
from scvae.errors import InputError
from scvae.preprocess.qc import add_qc_metrics, mito_genes
from scvae.preprocess.steps import (
    FilterPlan,
    batch_sizes,
    check_batch_sizes,
    drop_cells_left_empty,
    drop_cells_without_hvg_counts,
    drop_empty,
    filter_cells,
    filter_genes,
    fit_variance_trend,
    hvg_fit_error,
    hvg_needed,
    loess_message,
    record_hvg,
    require_hvg_backend,
    skip_hvg,
    store_record,
    validate_settings,
)

__all__ = ["FILTER_SETTINGS", "effective_settings", "preprocess"]

logger = logging.getLogger(__name__)

FILTER_SETTINGS = (
    "min_genes",
    "min_cells",
    "min_counts",
    "max_counts",
    "max_mito_fraction",
    "n_top_genes",
    "mito_prefix",
)
"""The keyword arguments of :func:`preprocess` that the workflow stage passes on."""


def preprocess(
    adata: anndata.AnnData,
    *,
    min_genes: int = 5,
    min_cells: int = 3,
    min_counts: int | None = None,
    max_counts: int | None = None,
    max_mito_fraction: float | None = None,
    n_top_genes: int | None = 2000,
    mito_prefix: str = "MT-",
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    copy: bool = False,
) -> anndata.AnnData | None:
    """Filter cells and genes and select highly variable genes, keeping raw counts.

    Steps, in order: drop cells and genes with no counts at all; compute QC metrics
    (:func:`scvae.preprocess.qc.add_qc_metrics`); drop cells below ``min_genes``
    detected genes, outside ``[min_counts, max_counts]`` total counts or above
    ``max_mito_fraction``; drop genes detected in fewer than ``min_cells`` of the
    remaining cells (and genes left with no counts); drop cells left with no counts;
    select the ``n_top_genes`` most variable genes with
    ``sc.pp.highly_variable_genes(flavor="seurat_v3")`` on ``layers["counts"]`` (ranked
    within each batch with ``batch_key``) and subset to them; drop cells with no counts
    in those genes. With ``batch_key``, every batch must keep
    :data:`scvae.preprocess.steps.MIN_BATCH_CELLS` cells after the filters and after
    the last step (batches below :data:`scvae.preprocess.steps.SMALL_BATCH_CELLS` get a
    warning).

    ``X`` stays the raw counts as float32 CSR (values within float rounding of an
    integer are rounded first, with a warning), ``layers["counts"]`` is subset along
    with it, and obs QC metrics count all genes that passed the gene filter (before
    highly-variable selection). Numbers of cells and genes after every step are
    recorded in ``uns["scvae"]["preprocess"]``. The filters are decided before
    ``adata`` is changed, so when they leave nothing the error leaves it as it was
    (but for that rounding).

    Parameters
    ----------
    adata
        Data with raw counts in ``X``, as returned by :func:`scvae.data.readers.read_counts`.
    min_genes
        Minimum number of detected genes per cell.
    min_cells
        Minimum number of cells a gene is detected in.
    min_counts
        Minimum total counts per cell; None for no limit.
    max_counts
        Maximum total counts per cell (doublets); None for no limit.
    max_mito_fraction
        Maximum fraction (0-1, not percent) of a cell's counts in mitochondrial genes;
        None for no limit. Skipped, with a log line, when there are no mitochondrial
        genes.
    n_top_genes
        Number of highly variable genes to keep; None keeps all genes. Skipped when
        no more genes than this remain.
    mito_prefix
        Name prefix of mitochondrial genes (case-insensitive).
    batch_key
        obs column holding each cell's batch (``"batch"`` as
        :func:`scvae.data.batches.read_dataset` writes it); None without batches.
        Recorded, with the cells per batch, in ``uns["scvae"]["preprocess"]``.
    covariate_keys
        obs columns holding categorical covariates; made categorical strings and
        recorded as ``covariate_keys``.
    copy
        Return a filtered copy instead of changing ``adata`` in place.

    Returns
    -------
    anndata.AnnData or None
        The filtered copy when ``copy`` is True, else None (``adata`` is subset in
        place). Written: ``X`` (the raw counts, float32 CSR) and ``layers["counts"]``
        (a copy of them); the QC metrics of
        :func:`scvae.preprocess.qc.add_qc_metrics` in ``obs`` and ``var``; with
        highly-variable selection, scanpy's ``var["highly_variable"]``,
        ``var["highly_variable_rank"]``, ``var["means"]``, ``var["variances"]``,
        ``var["variances_norm"]`` (and ``var["highly_variable_nbatches"]`` with
        batches); ``obs[batch_key]`` and ``obs[covariate_keys]`` as categoricals;
        ``uns["scvae"]["preprocess"]``: the settings, each step's cells and genes, and
        ``batch_key``, ``batch_cells`` and ``covariate_keys``, which later steps read
        (so its place is fixed: no ``key_added``).

    Raises
    ------
    InputError
        If a setting is invalid, ``X`` does not hold raw counts, no cells or no
        genes are left, a batch or covariate column is missing or incomplete, a batch
        keeps too few cells, or seurat_v3's variance trend cannot be fitted in a batch;
        the message names the input file and the settings or the batch.
    ImportError
        If highly-variable-gene selection is needed and ``scikit-misc`` is missing.
    """
    settings = validate_settings(
        min_genes=min_genes,
        min_cells=min_cells,
        min_counts=min_counts,
        max_counts=max_counts,
        max_mito_fraction=max_mito_fraction,
        n_top_genes=n_top_genes,
        mito_prefix=mito_prefix,
    )
    source = _source(adata)
    covariate_keys = check_covariate_keys(covariate_keys, batch_key)
    categorical = {k: covariate_column(adata.obs, k, source) for k in covariate_keys}
    batches = None
    if batch_key is not None:
        batches = batch_column(adata.obs, batch_key, source)
        categorical[batch_key] = batches
    counts = check_counts(
        adata.X, source=source, obs_names=adata.obs_names, var_names=adata.var_names, copy=copy
    )
    if counts is not adata.X:  # values were rounded into a new matrix
        if copy:  # filter a rounded copy: the caller's AnnData stays as it was
            adata = adata.copy()
        adata.X = counts
    # Decide every filter on masks first, so that bad settings or data raise before
    # adata has been touched.
    plan = _plan_filters(adata, settings, source, batches)
    if batches is not None:
        read = batch_sizes(batches)
        step = "4_drop_empty_after_filters"
        check_batch_sizes(batch_sizes(batches, plan.cells), read, source, step)
    require_hvg_backend(settings, int(plan.genes.sum()))
    if copy:
        adata = adata[plan.cells, plan.genes].copy()
    else:
        _subset(adata, plan.cells, plan.genes)
    for key, values in categorical.items():
        adata.obs[key] = values[plan.cells].remove_unused_categories()
    _ensure_counts(adata)
    add_qc_metrics(adata, mito_prefix=mito_prefix)
    _select_hvg(adata, plan, settings, source, batch_key)
    if batches is not None:
        after = batch_sizes(pd.Categorical(adata.obs[batch_key]))
        check_batch_sizes(after, read, source, "6_drop_empty_after_hvg", warn=False)
    for key in categorical:  # a covariate's value may have lost all its cells
        adata.obs[key] = adata.obs[key].cat.remove_unused_categories()
    store_record(adata, plan, settings, batch_key=batch_key, covariate_keys=covariate_keys)
    logger.info(
        "Preprocessing %s: %d cells x %d genes -> %d cells x %d genes",
        source,
        plan.cells.size,
        plan.genes.size,
        *adata.shape,
    )
    return adata if copy else None


def effective_settings(**filter_settings: Any) -> dict[str, Any]:
    """Return the filter settings with :func:`preprocess`'s defaults filled in.

    Parameters
    ----------
    **filter_settings
        Any of :data:`FILTER_SETTINGS`.

    Returns
    -------
    dict
        All of :data:`FILTER_SETTINGS`.

    Raises
    ------
    InputError
        If a name is not one of :data:`FILTER_SETTINGS`.
    """
    unknown = sorted(set(filter_settings) - set(FILTER_SETTINGS))
    if unknown:
        raise InputError(
            f"unknown preprocessing setting(s) {', '.join(unknown)}; valid: "
            f"{', '.join(FILTER_SETTINGS)}."
        )
    params = inspect.signature(preprocess).parameters
    settings = {name: params[name].default for name in FILTER_SETTINGS}
    settings.update(filter_settings)
    return settings


def _source(adata: anndata.AnnData) -> str:
    try:
        return str(adata.uns["scvae"]["input"]["path"])
    except (KeyError, TypeError):
        return "the input AnnData"


class _Entries:
    """The stored entries of a CSR count matrix, with their row of each entry."""

    def __init__(self, X: sparse.csr_matrix) -> None:
        self.shape = X.shape
        self.rows = np.repeat(np.arange(X.shape[0], dtype=np.int64), np.diff(X.indptr))
        self.cols = X.indices
        self.values = X.data
        self.detected = X.data != 0  # stored zeros are not detections

    def per_cell(self, weights: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, weights=weights, minlength=self.shape[0])

    def per_gene(self, weights: np.ndarray) -> np.ndarray:
        return np.bincount(self.cols, weights=weights, minlength=self.shape[1])


def _plan_filters(
    adata: anndata.AnnData,
    settings: dict[str, Any],
    source: str,
    batches: pd.Categorical | None,
) -> FilterPlan:
    X = adata.X if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
    entries = _Entries(sparse.csr_matrix(X))
    plan = FilterPlan.start(*entries.shape, batches=batches)
    drop_empty(
        plan,
        entries.per_cell(entries.detected) > 0,
        entries.per_gene(entries.detected) > 0,
        settings,
        source,
    )
    is_mito = mito_genes(adata, settings["mito_prefix"])
    plan.n_mito_genes = int((is_mito & plan.genes).sum())
    # The same numbers as scanpy's n_genes_by_counts, total_counts and pct_counts_mt.
    n_genes = entries.per_cell(entries.detected)
    totals = entries.per_cell(entries.values)
    mito = None
    if settings["max_mito_fraction"] is not None and plan.n_mito_genes:
        mito = entries.per_cell(entries.values * is_mito[entries.cols])
    filter_cells(plan, n_genes, totals, mito, settings, source)
    # Counted on the cells that passed.
    filter_genes(
        plan, entries.per_gene(entries.detected & plan.cells[entries.rows]), settings, source
    )
    # Cells whose only genes were rare ones have nothing left.
    has_counts = entries.per_cell(entries.detected & plan.genes[entries.cols]) > 0
    drop_cells_left_empty(plan, has_counts, settings, source)
    return plan


def _subset(adata: anndata.AnnData, cells: np.ndarray, genes: np.ndarray) -> None:
    # anndata's in-place subsetting, as used by sc.pp.filter_cells(inplace=True).
    if not cells.all():
        adata._inplace_subset_obs(cells)
    if not genes.all():
        adata._inplace_subset_var(genes)


def _ensure_counts(adata: anndata.AnnData) -> None:
    X = adata.X
    if not (sparse.isspmatrix_csr(X) and X.dtype == np.float32):
        adata.X = sparse.csr_matrix(X, dtype=np.float32)
    adata.X.eliminate_zeros()
    counts = adata.layers.get("counts")
    if counts is None or counts is adata.X:
        # A copy, not the same object: in-place normalization of X must not reach it.
        adata.layers["counts"] = adata.X.copy()


def _select_hvg(
    adata: anndata.AnnData,
    plan: FilterPlan,
    settings: dict[str, Any],
    source: str,
    batch_key: str | None,
) -> None:
    before = adata.shape
    if not hvg_needed(settings, adata.n_vars):
        skip_hvg(plan, before, settings, source)
        return
    try:
        sc.pp.highly_variable_genes(
            adata,
            flavor="seurat_v3",
            n_top_genes=settings["n_top_genes"],
            layer="counts",
            batch_key=batch_key,
            inplace=True,
        )
    except ValueError as err:
        # scikit-misc's loess says only that a fit is singular; name the batch.
        failures = _failed_trends(adata, batch_key)
        if not failures:
            raise
        raise hvg_fit_error(source, failures) from err
    adata._inplace_subset_var(adata.var["highly_variable"].to_numpy())
    record_hvg(plan, before, adata.shape, source)
    # A cell may have counts only outside the selected genes; a count model cannot
    # use a cell with no counts at all.
    has_counts = np.diff(adata.X.indptr) > 0
    drop_cells_without_hvg_counts(plan, has_counts, adata.n_vars, source)
    if not has_counts.all():
        adata._inplace_subset_obs(has_counts)


def _failed_trends(
    adata: anndata.AnnData, batch_key: str | None
) -> dict[str | None, tuple[int, float, str]]:
    """The batches (None: all cells) whose seurat_v3 variance trend cannot be fitted."""
    X = sparse.csr_matrix(adata.layers["counts"], dtype=np.float64)
    groups: dict[str | None, np.ndarray] = {None: np.ones(adata.n_obs, dtype=bool)}
    if batch_key is not None:
        values = adata.obs[batch_key].to_numpy()
        groups = {str(b): values == b for b in np.unique(values)}
    failures = {}
    for batch, rows in groups.items():
        sub = X[rows]
        n = sub.shape[0]
        mean = np.asarray(sub.sum(axis=0)).ravel() / n
        variance = (np.asarray(sub.multiply(sub).sum(axis=0)).ravel() / n - mean**2) * n / (n - 1)
        try:
            fit_variance_trend(mean, variance)
        except ValueError as err:
            median = float(np.median(np.asarray(sub.sum(axis=1)).ravel()))
            failures[batch] = (n, median, loess_message(err))
    return failures
