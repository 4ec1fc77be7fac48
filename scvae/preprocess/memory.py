"""Quality control, cell and gene filtering, and highly-variable-gene selection.

The steps are those a scanpy user expects (``sc.pp.calculate_qc_metrics``,
``filter_cells``/``filter_genes``-style thresholds, ``highly_variable_genes`` with the
``seurat_v3`` flavor), but ``X`` stays the raw counts: the models in scvae have a count
likelihood and normalize internally. Every step and its cell and gene numbers are
recorded in ``adata.uns["scvae"]["preprocess"]``.

The defaults only remove what carries no information, so that already-filtered
matrices (such as the deep-clustering benchmark files, where a cell can have a
median of 35 counts) lose almost no cells. Raw Cell Ranger output needs stricter
thresholds, for example ``min_genes=200, max_mito_fraction=0.2``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import anndata
import h5py
import numpy as np
import scanpy as sc
from scipy import sparse

from scvae.data.readers import check_counts, read_counts, write_h5ad
from scvae.errors import InputError

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
"""Keyword arguments of :func:`preprocess` that :func:`run_preprocess` passes on."""


# ------------------------------------------------------------------------ QC metrics


def mito_genes(adata: anndata.AnnData, prefix: str = "MT-") -> np.ndarray:
    """Flag mitochondrial genes by name prefix, ignoring case (``MT-`` and ``mt-``).

    Parameters
    ----------
    adata
        Data whose ``var_names`` are gene symbols.
    prefix
        Name prefix of mitochondrial genes.

    Returns
    -------
    numpy.ndarray
        Boolean mask over genes.
    """
    names = adata.var_names.astype(str).str.upper()
    return np.asarray(names.str.startswith(prefix.upper()), dtype=bool)


def add_qc_metrics(adata: anndata.AnnData, *, mito_prefix: str = "MT-") -> bool:
    """Add scanpy's QC metrics on the raw counts in ``X`` to obs and var, in place.

    obs gets ``n_genes_by_counts`` and ``total_counts``, plus ``total_counts_mt`` and
    ``pct_counts_mt`` (a percentage, 0-100) when there are mitochondrial genes; var
    gets ``mt``, ``n_cells_by_counts``, ``mean_counts``, ``pct_dropout_by_counts`` and
    ``total_counts``.

    Parameters
    ----------
    adata
        Data with raw counts in ``X``.
    mito_prefix
        Name prefix of mitochondrial genes (case-insensitive).

    Returns
    -------
    bool
        Whether any mitochondrial genes were found.
    """
    adata.var["mt"] = mito_genes(adata, mito_prefix)
    has_mito = bool(adata.var["mt"].any())
    for stale in ("total_counts_mt", "pct_counts_mt"):
        if stale in adata.obs:
            del adata.obs[stale]
    sc.pp.calculate_qc_metrics(
        adata,
        qc_vars=["mt"] if has_mito else [],
        percent_top=None,
        log1p=False,
        inplace=True,
    )
    return has_mito


# ------------------------------------------------------------------------ preprocess


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
    (:func:`add_qc_metrics`); drop cells below ``min_genes`` detected genes, outside
    ``[min_counts, max_counts]`` total counts or above ``max_mito_fraction``; drop
    genes detected in fewer than ``min_cells`` of the remaining cells (and genes left
    with no counts); drop cells left with no counts; select the ``n_top_genes`` most
    variable genes with ``sc.pp.highly_variable_genes(flavor="seurat_v3")`` on
    ``layers["counts"]`` and subset to them; drop cells with no counts in those genes.

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
    settings = _validate_settings(
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
    _require_hvg_backend(settings, int(plan.genes.sum()))
    if copy:
        adata = adata[plan.cells, plan.genes].copy()
    else:
        _subset(adata, plan.cells, plan.genes)
    _ensure_counts(adata)
    add_qc_metrics(adata, mito_prefix=mito_prefix)
    _select_hvg(adata, plan, settings, source)
    _store_record(adata, plan, settings)
    logger.info(
        "Preprocessing %s: %d cells x %d genes -> %d cells x %d genes",
        source,
        plan.cells.size,
        plan.genes.size,
        *adata.shape,
    )
    return adata if copy else None


def _validate_settings(**settings: Any) -> dict[str, Any]:
    for name in ("min_genes", "min_cells", "min_counts", "max_counts", "n_top_genes"):
        value = settings[name]
        if value is None and name not in ("min_genes", "min_cells"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise InputError(f"setting {name}={value!r}: expected a non-negative integer.")
    if settings["n_top_genes"] is not None and settings["n_top_genes"] < 1:
        raise InputError("setting n_top_genes=0: pass None to keep all genes.")
    lo, hi = settings["min_counts"], settings["max_counts"]
    if lo is not None and hi is not None and lo > hi:
        raise InputError(f"settings min_counts={lo} > max_counts={hi}: no cell could pass.")
    fraction = settings["max_mito_fraction"]
    is_number = isinstance(fraction, int | float) and not isinstance(fraction, bool)
    if fraction is not None and not (is_number and 0 <= fraction <= 1):
        raise InputError(
            f"setting max_mito_fraction={fraction!r}: expected a fraction between 0 and 1 "
            "(0.2 for 20%), not a percentage."
        )
    if not isinstance(settings["mito_prefix"], str) or not settings["mito_prefix"]:
        raise InputError(
            f"setting mito_prefix={settings['mito_prefix']!r}: expected a name prefix."
        )
    return settings


def _source(adata: anndata.AnnData) -> str:
    try:
        return str(adata.uns["scvae"]["input"]["path"])
    except (KeyError, TypeError):
        return "the input AnnData"


@dataclass
class _Plan:
    """Which cells and genes survive the filters, and what each step removed."""

    cells: np.ndarray
    genes: np.ndarray
    n_mito_genes: int = 0
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def step(self, name: str, before: tuple[int, int], **extra: Any) -> None:
        _record_step(self, name, before, self.shape, **extra)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.cells.sum()), int(self.genes.sum())


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


def _plan_filters(adata: anndata.AnnData, settings: dict[str, Any], source: str) -> _Plan:
    X = adata.X if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
    entries = _Entries(sparse.csr_matrix(X))
    n_cells, n_genes = entries.shape
    plan = _Plan(cells=np.ones(n_cells, dtype=bool), genes=np.ones(n_genes, dtype=bool))
    plan.steps["0_input"] = {"cells": n_cells, "genes": n_genes}

    before = plan.shape
    plan.cells &= entries.per_cell(entries.detected) > 0
    plan.genes &= entries.per_gene(entries.detected) > 0
    plan.step("1_drop_empty", before)
    _log_removed(source, "with no counts", before, plan.shape)
    _require_nonempty(plan, source, "1_drop_empty", settings, before)

    is_mito = mito_genes(adata, settings["mito_prefix"])
    plan.n_mito_genes = int((is_mito & plan.genes).sum())
    _plan_cell_filters(plan, entries, is_mito, settings, source)
    _plan_gene_filter(plan, entries, settings, source)

    before = plan.shape
    # Cells whose only genes were rare ones have nothing left.
    plan.cells &= entries.per_cell(entries.detected & plan.genes[entries.cols]) > 0
    plan.step("4_drop_empty_after_filters", before)
    _log_removed(source, "left with no counts by the gene filter", before, plan.shape)
    _require_nonempty(plan, source, "4_drop_empty_after_filters", settings, before)
    return plan


def _plan_cell_filters(
    plan: _Plan, entries: _Entries, is_mito: np.ndarray, settings: dict[str, Any], source: str
) -> None:
    # The same numbers as scanpy's n_genes_by_counts, total_counts and pct_counts_mt.
    n_genes = entries.per_cell(entries.detected)
    totals = entries.per_cell(entries.values)
    mito = None
    if settings["max_mito_fraction"] is not None and plan.n_mito_genes:
        mito = entries.per_cell(entries.values * is_mito[entries.cols])
    _apply_cell_filters(plan, n_genes, totals, mito, settings, source)


def _apply_cell_filters(
    plan: _Plan,
    n_genes: np.ndarray,
    totals: np.ndarray,
    mito: np.ndarray | None,
    settings: dict[str, Any],
    source: str,
) -> None:
    """Mark the cells that fail the cell filters, from per-cell statistics.

    Shared by the in-memory and the streamed (backed) preprocessing, which compute
    the statistics differently. ``mito`` (mitochondrial counts per cell) is only read
    when the mitochondrial filter applies.
    """
    before = plan.shape
    failed = {"min_genes": n_genes < settings["min_genes"]}
    if settings["min_counts"] is not None:
        failed["min_counts"] = totals < settings["min_counts"]
    if settings["max_counts"] is not None:
        failed["max_counts"] = totals > settings["max_counts"]
    mito_note = "none"
    if settings["max_mito_fraction"] is not None and plan.n_mito_genes:
        fraction = np.divide(mito, totals, out=np.zeros_like(mito), where=totals > 0)
        failed["max_mito_fraction"] = fraction > settings["max_mito_fraction"]
        mito_note = "applied"
    elif settings["max_mito_fraction"] is not None:
        mito_note = f"skipped: no genes start with {settings['mito_prefix']!r}"
        logger.info("%s: max_mito_fraction %s", source, mito_note)
    removed_by = {f"failed_{k}": int((v & plan.cells).sum()) for k, v in failed.items()}
    plan.cells &= ~np.logical_or.reduce(list(failed.values()))
    plan.step("2_filter_cells", before, mito_filter=mito_note, **removed_by)
    logger.info(
        "%s: cell filters removed %d of %d cells (%s)",
        source,
        before[0] - plan.shape[0],
        before[0],
        ", ".join(f"{k}: {v}" for k, v in removed_by.items()),
    )
    _require_nonempty(plan, source, "2_filter_cells", settings, before)


def _plan_gene_filter(
    plan: _Plan, entries: _Entries, settings: dict[str, Any], source: str
) -> None:
    before = plan.shape
    # Counted on the cells that passed, and at least 1 so that no all-zero gene stays.
    n_cells = entries.per_gene(entries.detected & plan.cells[entries.rows])
    plan.genes &= n_cells >= max(settings["min_cells"], 1)
    plan.step("3_filter_genes", before)
    logger.info(
        "%s: min_cells=%d removed %d of %d genes",
        source,
        settings["min_cells"],
        before[1] - plan.shape[1],
        before[1],
    )
    _require_nonempty(plan, source, "3_filter_genes", settings, before)


def _log_removed(source: str, why: str, before: tuple[int, int], after: tuple[int, int]) -> None:
    n_cells, n_genes = before[0] - after[0], before[1] - after[1]
    if n_cells or n_genes:
        logger.info("%s: removed %d cell(s) and %d gene(s) %s", source, n_cells, n_genes, why)


def _require_nonempty(
    plan: _Plan,
    source: str,
    step: str,
    settings: dict[str, Any],
    before: tuple[int, int],
) -> None:
    n_cells, n_genes = plan.shape
    if n_cells and n_genes:
        return
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    raise InputError(
        f"{source}: no {'cells' if not n_cells else 'genes'} left after step {step} "
        f"(had {before[0]} cells x {before[1]} genes; settings: {shown}). Lower the "
        "thresholds, or check that the file holds the expected data."
    )


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


def _hvg_needed(settings: dict[str, Any], n_genes: int) -> bool:
    return settings["n_top_genes"] is not None and n_genes > settings["n_top_genes"]


def _require_hvg_backend(settings: dict[str, Any], n_genes: int) -> None:
    if not _hvg_needed(settings, n_genes) or importlib.util.find_spec("skmisc") is not None:
        return
    raise ImportError(
        f"selecting n_top_genes={settings['n_top_genes']} highly variable genes of "
        f"{n_genes} (flavor='seurat_v3') needs the scikit-misc package: pip install "
        "scikit-misc, or pass n_top_genes=None to keep all genes."
    )


def _select_hvg(adata: anndata.AnnData, plan: _Plan, settings: dict[str, Any], source: str) -> None:
    before = adata.shape
    n_top = settings["n_top_genes"]
    if not _hvg_needed(settings, adata.n_vars):
        note = (
            "skipped: n_top_genes is None"
            if n_top is None
            else f"skipped: {adata.n_vars} genes <= n_top_genes={n_top}"
        )
        logger.info("%s: highly variable genes %s", source, note)
        _record_step(plan, "5_highly_variable_genes", before, adata.shape, hvg=note)
        _record_step(plan, "6_drop_empty_after_hvg", adata.shape, adata.shape)
        return
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_top, layer="counts", inplace=True
    )
    hvg = adata.var["highly_variable"].to_numpy()
    adata._inplace_subset_var(hvg)
    _record_step(plan, "5_highly_variable_genes", before, adata.shape, hvg="seurat_v3")
    logger.info(
        "%s: kept %d highly variable genes of %d (seurat_v3)", source, *adata.shape[1:], before[1]
    )

    # A cell may have counts only outside the selected genes; a count model cannot
    # use a cell with no counts at all.
    after_hvg = adata.shape
    has_counts = np.diff(adata.X.indptr) > 0
    if not has_counts.any():
        raise InputError(
            f"{source}: no cell has counts in the {adata.n_vars} highly variable genes."
        )
    if not has_counts.all():
        adata._inplace_subset_obs(has_counts)
    _record_step(plan, "6_drop_empty_after_hvg", after_hvg, adata.shape)
    _log_removed(source, "with no counts in the highly variable genes", after_hvg, adata.shape)


def _record_step(
    plan: _Plan, name: str, before: tuple[int, int], after: tuple[int, int], **extra: Any
) -> None:
    entry = {
        "cells": int(after[0]),
        "genes": int(after[1]),
        "cells_removed": int(before[0] - after[0]),
        "genes_removed": int(before[1] - after[1]),
    }
    entry.update({k: _serializable(v) for k, v in extra.items()})
    plan.steps[name] = entry


def _store_record(adata: anndata.AnnData, plan: _Plan, settings: dict[str, Any]) -> None:
    scvae = dict(adata.uns.get("scvae", {}))
    scvae["preprocess"] = {
        "settings": {k: _serializable(v) for k, v in settings.items()},
        "steps": plan.steps,
        "n_mito_genes": plan.n_mito_genes,
        "cells_in": int(plan.cells.size),
        "genes_in": int(plan.genes.size),
        "cells_out": int(adata.n_obs),
        "genes_out": int(adata.n_vars),
    }
    adata.uns["scvae"] = scvae


def _serializable(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return str(value)


# ---------------------------------------------------------------------------- CLI


def run_preprocess(
    input: str | os.PathLike,
    output: str | os.PathLike,
    qc_plot: str | os.PathLike,
    *,
    format: str | None = None,
    label_key: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
    **filter_settings: Any,
) -> None:
    """Read, check and preprocess a count matrix; write the h5ad and a QC plot.

    The QC plot shows the cells before filtering, with the thresholds drawn in, so
    that it explains what was removed; it is written before filtering, so it exists
    even when filtering leaves no cells.

    Parameters
    ----------
    input
        Input file or 10x folder (see :func:`scvae.data.readers.read_counts`).
    output
        Destination ``.h5ad``, written atomically.
    qc_plot
        Destination ``.png`` of the QC plot, written atomically.
    format
        Input format; detected when None.
    label_key
        obs column holding the cell labels.
    layer
        h5ad/loom layer holding the raw counts.
    transpose
        The text or X/Y input is genes x cells.
    **filter_settings
        Any of :data:`FILTER_SETTINGS`, passed to :func:`preprocess`.

    Raises
    ------
    InputError
        On bad input or settings (see :func:`scvae.data.readers.read_counts` and
        :func:`preprocess`).
    """
    from scvae.plotting.qc import plot_qc

    settings = effective_settings(**filter_settings)
    if _large_h5ad(input, format, layer):
        # Streamed in chunks of rows: memory does not grow with the counts.
        from scvae.preprocess.streamed import preprocess_h5ad_backed

        preprocess_h5ad_backed(input, output, qc_plot, label_key=label_key, layer=layer, **settings)
        return
    adata = read_counts(input, format=format, label_key=label_key, layer=layer, transpose=transpose)
    plot_qc(adata, qc_plot, thresholds=settings, mito_prefix=settings["mito_prefix"])
    preprocess(adata, **settings)
    write_h5ad(adata, output)


def _large_h5ad(path: str | os.PathLike, format: str | None, layer: str | None) -> bool:
    """An h5ad input of at least :func:`scvae.data.ondisk.backed_min_bytes` with CSR counts."""
    from pathlib import Path

    from scvae.data.ondisk import backed_min_bytes
    from scvae.data.readers import detect_format

    path = Path(path)
    if not path.is_file() or path.stat().st_size < backed_min_bytes():
        return False
    if (format or detect_format(path)) != "h5ad":
        return False
    try:
        with h5py.File(path, "r") as f:
            key = "X" if layer is None else f"layers/{layer}"
            # A missing matrix is reported by the streamed reader, without loading the file.
            return key not in f or f[key].attrs.get("encoding-type") == "csr_matrix"
    except OSError:
        return False  # the in-memory reader reports the corrupt file


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
