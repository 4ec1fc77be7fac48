"""Preprocessing in memory: quality control, cell and gene filters, highly variable genes.

The steps are those a scanpy user expects (``sc.pp.calculate_qc_metrics``,
``filter_cells``/``filter_genes``-style thresholds, ``highly_variable_genes`` with the
``seurat_v3`` flavor), but ``X`` stays the raw counts: the models in scvae have a count
likelihood and normalize internally. Every step and its cell and gene numbers are
recorded in ``adata.uns["scvae"]["preprocess"]``. The steps themselves are decided in
:mod:`scvae.preprocess.steps`, shared with the streamed path for files too large for
memory (:mod:`scvae.preprocess.streamed`).

The defaults only remove what carries no information, so that already-filtered
matrices (such as the deep-clustering benchmark files, where a cell can have a
median of 35 counts) lose almost no cells. Raw Cell Ranger output needs stricter
thresholds, for example ``min_genes=200, max_mito_fraction=0.2``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import anndata
import numpy as np
import scanpy as sc
from scipy import sparse

from scvae.data.checks import check_counts
from scvae.errors import InputError
from scvae.preprocess.qc import add_qc_metrics, mito_genes
from scvae.preprocess.steps import (
    FilterPlan,
    drop_cells_left_empty,
    drop_cells_without_hvg_counts,
    drop_empty,
    filter_cells,
    filter_genes,
    hvg_needed,
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
    copy: bool = False,
) -> anndata.AnnData | None:
    """Filter cells and genes and select highly variable genes, keeping raw counts.

    Steps, in order: drop cells and genes with no counts at all; compute QC metrics
    (:func:`scvae.preprocess.qc.add_qc_metrics`); drop cells below ``min_genes``
    detected genes, outside ``[min_counts, max_counts]`` total counts or above
    ``max_mito_fraction``; drop genes detected in fewer than ``min_cells`` of the
    remaining cells (and genes left with no counts); drop cells left with no counts;
    select the ``n_top_genes`` most variable genes with
    ``sc.pp.highly_variable_genes(flavor="seurat_v3")`` on ``layers["counts"]`` and
    subset to them; drop cells with no counts in those genes.

    ``X`` stays the raw counts as float32 CSR, ``layers["counts"]`` is subset along
    with it, and obs QC metrics count all genes that passed the gene filter (before
    highly-variable selection). Numbers of cells and genes after every step are
    recorded in ``uns["scvae"]["preprocess"]``. The filters are decided before
    ``adata`` is changed, so when they leave nothing the error leaves it as it was.

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
    copy
        Return a filtered copy instead of changing ``adata`` in place.

    Returns
    -------
    anndata.AnnData or None
        The filtered copy when ``copy`` is True, else None.

    Raises
    ------
    InputError
        If a setting is invalid, ``X`` does not hold raw counts, or no cells or no
        genes are left; the message names the input file and the settings.
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
    check_counts(adata.X, source=source)
    # Decide every filter on masks first, so that bad settings or data raise before
    # adata has been touched.
    plan = _plan_filters(adata, settings, source)
    require_hvg_backend(settings, int(plan.genes.sum()))
    if copy:
        adata = adata[plan.cells, plan.genes].copy()
    else:
        _subset(adata, plan.cells, plan.genes)
    _ensure_counts(adata)
    add_qc_metrics(adata, mito_prefix=mito_prefix)
    _select_hvg(adata, plan, settings, source)
    store_record(adata, plan, settings)
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


def _plan_filters(adata: anndata.AnnData, settings: dict[str, Any], source: str) -> FilterPlan:
    X = adata.X if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
    entries = _Entries(sparse.csr_matrix(X))
    plan = FilterPlan.start(*entries.shape)
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
    adata: anndata.AnnData, plan: FilterPlan, settings: dict[str, Any], source: str
) -> None:
    before = adata.shape
    if not hvg_needed(settings, adata.n_vars):
        skip_hvg(plan, before, settings, source)
        return
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=settings["n_top_genes"], layer="counts", inplace=True
    )
    adata._inplace_subset_var(adata.var["highly_variable"].to_numpy())
    record_hvg(plan, before, adata.shape, source)
    # A cell may have counts only outside the selected genes; a count model cannot
    # use a cell with no counts at all.
    has_counts = np.diff(adata.X.indptr) > 0
    drop_cells_without_hvg_counts(plan, has_counts, adata.n_vars, source)
    if not has_counts.all():
        adata._inplace_subset_obs(has_counts)
