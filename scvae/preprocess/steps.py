"""The preprocessing steps, decided once for the in-memory and the streamed path.

Both paths compute per-cell and per-gene statistics their own way -- from the whole
matrix (:mod:`scvae.preprocess.memory`) or chunk by chunk from disk
(:mod:`scvae.preprocess.streamed`) -- and hand them to the functions here, which decide
what each step removes, log it, stop with a clear error when nothing is left, and record
it in a :class:`FilterPlan`. :func:`store_record` then writes the record to
``uns["scvae"]["preprocess"]``. The steps, as recorded:

0. ``0_input``: the cells and genes read;
1. ``1_drop_empty``: cells and genes with no counts (:func:`drop_empty`);
2. ``2_filter_cells``: the cell filters (:func:`filter_cells`);
3. ``3_filter_genes``: genes in fewer than ``min_cells`` passing cells (:func:`filter_genes`);
4. ``4_drop_empty_after_filters``: cells left with no counts (:func:`drop_cells_left_empty`);
5. ``5_highly_variable_genes``: seurat_v3's selection (:func:`record_hvg`) or its skip
   (:func:`skip_hvg`);
6. ``6_drop_empty_after_hvg``: cells with no counts in the selected genes
   (:func:`drop_cells_without_hvg_counts`).

With batches (``obs["batch"]``), every batch must keep :data:`MIN_BATCH_CELLS` cells after
steps 4 and 6 (:func:`check_batch_sizes`; fewer than :data:`SMALL_BATCH_CELLS` get a
warning), and seurat_v3 ranks the genes per batch, as
``sc.pp.highly_variable_genes(batch_key=...)`` does; a batch whose variance trend cannot
be fitted is named in the error (:func:`hvg_fit_error`).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata
import numpy as np
import pandas as pd

from scvae.errors import InputError
from scvae.preprocess.qc import mito_fraction

__all__ = [
    "MIN_BATCH_CELLS",
    "SMALL_BATCH_CELLS",
    "FilterPlan",
    "batch_sizes",
    "check_batch_sizes",
    "drop_cells_left_empty",
    "drop_cells_without_hvg_counts",
    "drop_empty",
    "failed_cell_filters",
    "filter_cells",
    "fit_variance_trend",
    "filter_genes",
    "hvg_fit_error",
    "hvg_needed",
    "loess_message",
    "log_removed",
    "record_hvg",
    "require_hvg_backend",
    "require_nonempty",
    "skip_hvg",
    "store_record",
    "validate_settings",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, int]

MIN_BATCH_CELLS = 20
"""Fewest cells a batch may keep after the filters; a batch with fewer is an error.

scanpy's batch-aware seurat_v3 fits, per batch, a loess curve (span 0.3, degree 2) of
each gene's log variance (ddof 1) on its log mean. With few cells the means take few
distinct values (multiples of 1/n) and the local fits turn singular: on the CellBench
plates (about 22,000 counts per cell) the fit failed in at least one of five random
subsamples of every plate at 15 cells or fewer, and in none at 20; a single cell gives an
infinite variance, on which scikit-misc's loess crashes the process instead of raising
(scanpy#1504, scvi-tools#3742). A batch-aware model fits parameters of its own to each
batch (its decoder weights, a dispersion per gene with ``dispersion: gene-batch``), which
fewer cells do not determine either. Shallow batches need more cells for the fit (Kang
et al.'s PBMCs, 864 counts per cell: about 350); that failure is caught and named by
batch (:func:`hvg_fit_error`).
"""

SMALL_BATCH_CELLS = 128
"""Batches with fewer cells than this get a warning: fewer than one minibatch of
scvi-tools' default size (128; scvae's default ``batch_size`` is 512), so the batch's own
parameters rest on fewer cells than a single gradient step averages over."""


# -------------------------------------------------------------------------- settings


def validate_settings(**settings: Any) -> dict[str, Any]:
    """Check the filter settings before any data are touched.

    Parameters
    ----------
    **settings
        All of :data:`scvae.preprocess.memory.FILTER_SETTINGS`.

    Returns
    -------
    dict
        ``settings``, unchanged.

    Raises
    ------
    InputError
        If a count is not a non-negative integer, ``n_top_genes`` is 0, ``min_counts``
        exceeds ``max_counts``, ``max_mito_fraction`` is not a fraction (0-1) or
        ``mito_prefix`` is empty.
    """
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


# ------------------------------------------------------------------------------ plan


@dataclass
class FilterPlan:
    """Which cells and genes survive the filters, and what each step removed.

    Attributes
    ----------
    cells, genes
        Boolean masks over the input's cells and genes.
    n_mito_genes
        Mitochondrial genes with counts (those the mitochondrial filter uses).
    batches
        Each input cell's batch, or None without batches.
    steps
        Step name -> cells and genes after it and removed by it (and notes).
    """

    cells: np.ndarray
    genes: np.ndarray
    n_mito_genes: int = 0
    batches: pd.Categorical | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def start(cls, n_cells: int, n_genes: int, batches: pd.Categorical | None = None) -> FilterPlan:
        """A plan that keeps everything, with step ``0_input`` recorded."""
        plan = cls(
            cells=np.ones(n_cells, dtype=bool), genes=np.ones(n_genes, dtype=bool), batches=batches
        )
        plan.steps["0_input"] = {"cells": n_cells, "genes": n_genes}
        return plan

    @property
    def shape(self) -> Shape:
        """Cells and genes kept so far."""
        return int(self.cells.sum()), int(self.genes.sum())

    def step(self, name: str, before: Shape, **extra: Any) -> None:
        """Record step ``name``, from ``before`` to the plan's current shape."""
        self.record(name, before, self.shape, **extra)

    def record(self, name: str, before: Shape, after: Shape, **extra: Any) -> None:
        """Record step ``name`` from ``before`` to ``after`` cells x genes, with notes."""
        entry = {
            "cells": int(after[0]),
            "genes": int(after[1]),
            "cells_removed": int(before[0] - after[0]),
            "genes_removed": int(before[1] - after[1]),
        }
        entry.update({k: _serializable(v) for k, v in extra.items()})
        self.steps[name] = entry


def log_removed(source: str, why: str, before: Shape, after: Shape) -> None:
    """Log how many cells and genes a step removed, when it removed any.

    Parameters
    ----------
    source
        The input, named in the line.
    why
        What the removed cells and genes had in common ("with no counts").
    before, after
        Cells x genes before and after the step.
    """
    n_cells, n_genes = before[0] - after[0], before[1] - after[1]
    if n_cells or n_genes:
        logger.info("%s: removed %d cell(s) and %d gene(s) %s", source, n_cells, n_genes, why)


def require_nonempty(
    plan: FilterPlan, source: str, step: str, settings: dict[str, Any], before: Shape
) -> None:
    """Stop when a step left no cells or no genes.

    Parameters
    ----------
    plan
        The plan after ``step``.
    source
        The input, named in the message.
    step
        The step's name.
    settings
        The filter settings, shown in the message.
    before
        Cells x genes before the step.

    Raises
    ------
    InputError
        If no cells or no genes are left.
    """
    n_cells, n_genes = plan.shape
    if n_cells and n_genes:
        return
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    raise InputError(
        f"{source}: no {'cells' if not n_cells else 'genes'} left after step {step} "
        f"(had {before[0]} cells x {before[1]} genes; settings: {shown}). Lower the "
        "thresholds, or check that the file holds the expected data."
    )


# ------------------------------------------------------------------------- filters


def drop_empty(
    plan: FilterPlan,
    cells_with_counts: np.ndarray,
    genes_with_counts: np.ndarray,
    settings: dict[str, Any],
    source: str,
) -> None:
    """Step ``1_drop_empty``: drop the cells and genes with no counts at all.

    Parameters
    ----------
    plan
        The plan, changed in place.
    cells_with_counts, genes_with_counts
        Boolean masks: the cells and genes with at least one detection.
    settings
        The filter settings (for the error message).
    source
        The input, named in log lines and errors.
    """
    before = plan.shape
    plan.cells &= cells_with_counts
    plan.genes &= genes_with_counts
    plan.step("1_drop_empty", before)
    log_removed(source, "with no counts", before, plan.shape)
    require_nonempty(plan, source, "1_drop_empty", settings, before)


def failed_cell_filters(
    n_genes: np.ndarray,
    totals: np.ndarray,
    mito: np.ndarray | None,
    settings: dict[str, Any],
) -> dict[str, np.ndarray]:
    """The cells that fail each cell filter, from per-cell statistics.

    Parameters
    ----------
    n_genes
        Detected genes per cell.
    totals
        Total counts per cell.
    mito
        Mitochondrial counts per cell; None when the mitochondrial filter does not
        apply (no ``max_mito_fraction``, or no mitochondrial genes).
    settings
        The filter settings.

    Returns
    -------
    dict
        Setting name -> boolean mask of the cells that fail it, for the filters that
        are set, in the order ``min_genes``, ``min_counts``, ``max_counts``,
        ``max_mito_fraction``.
    """
    failed = {"min_genes": n_genes < settings["min_genes"]}
    if settings["min_counts"] is not None:
        failed["min_counts"] = totals < settings["min_counts"]
    if settings["max_counts"] is not None:
        failed["max_counts"] = totals > settings["max_counts"]
    if settings["max_mito_fraction"] is not None and mito is not None:
        failed["max_mito_fraction"] = mito_fraction(mito, totals) > settings["max_mito_fraction"]
    return failed


def filter_cells(
    plan: FilterPlan,
    n_genes: np.ndarray,
    totals: np.ndarray,
    mito: np.ndarray | None,
    settings: dict[str, Any],
    source: str,
) -> None:
    """Step ``2_filter_cells``: drop the cells that fail a cell filter.

    Parameters
    ----------
    plan
        The plan after step 1 (with ``n_mito_genes`` set), changed in place.
    n_genes, totals
        Detected genes and total counts per cell.
    mito
        Mitochondrial counts per cell; only read when the mitochondrial filter applies
        (``max_mito_fraction`` set and ``plan.n_mito_genes`` > 0).
    settings
        The filter settings.
    source
        The input, named in log lines and errors.
    """
    before = plan.shape
    mito_applies = settings["max_mito_fraction"] is not None and plan.n_mito_genes
    failed = failed_cell_filters(n_genes, totals, mito if mito_applies else None, settings)
    mito_note = "none"
    if mito_applies:
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
    require_nonempty(plan, source, "2_filter_cells", settings, before)


def filter_genes(
    plan: FilterPlan, n_cells: np.ndarray, settings: dict[str, Any], source: str
) -> None:
    """Step ``3_filter_genes``: drop genes detected in fewer than ``min_cells`` cells.

    Parameters
    ----------
    plan
        The plan after step 2, changed in place.
    n_cells
        Per gene, the cells that passed step 2 it is detected in. At least 1 is
        required whatever ``min_cells``, so that no all-zero gene stays.
    settings
        The filter settings.
    source
        The input, named in log lines and errors.
    """
    before = plan.shape
    plan.genes &= n_cells >= max(settings["min_cells"], 1)
    plan.step("3_filter_genes", before)
    logger.info(
        "%s: min_cells=%d removed %d of %d genes",
        source,
        settings["min_cells"],
        before[1] - plan.shape[1],
        before[1],
    )
    require_nonempty(plan, source, "3_filter_genes", settings, before)


def drop_cells_left_empty(
    plan: FilterPlan, has_counts: np.ndarray, settings: dict[str, Any], source: str
) -> None:
    """Step ``4_drop_empty_after_filters``: drop cells whose only genes were filtered out.

    Parameters
    ----------
    plan
        The plan after step 3, changed in place.
    has_counts
        Boolean mask over all cells: counts in the genes that passed.
    settings
        The filter settings (for the error message).
    source
        The input, named in log lines and errors.
    """
    before = plan.shape
    plan.cells &= has_counts
    plan.step("4_drop_empty_after_filters", before)
    log_removed(source, "left with no counts by the gene filter", before, plan.shape)
    require_nonempty(plan, source, "4_drop_empty_after_filters", settings, before)


# ----------------------------------------------------------- highly variable genes


def hvg_needed(settings: dict[str, Any], n_genes: int) -> bool:
    """Whether highly-variable-gene selection runs: more genes left than ``n_top_genes``."""
    return settings["n_top_genes"] is not None and n_genes > settings["n_top_genes"]


def require_hvg_backend(settings: dict[str, Any], n_genes: int) -> None:
    """Stop before any work when seurat_v3 selection is needed and scikit-misc is missing.

    Parameters
    ----------
    settings
        The filter settings.
    n_genes
        Genes left after the gene filter.

    Raises
    ------
    ImportError
        If selection is needed (:func:`hvg_needed`) and ``skmisc`` is not installed.
    """
    if not hvg_needed(settings, n_genes) or importlib.util.find_spec("skmisc") is not None:
        return
    raise ImportError(
        f"selecting n_top_genes={settings['n_top_genes']} highly variable genes of "
        f"{n_genes} (flavor='seurat_v3') needs the scikit-misc package: pip install "
        "scikit-misc, or pass n_top_genes=None to keep all genes."
    )


def skip_hvg(plan: FilterPlan, shape: Shape, settings: dict[str, Any], source: str) -> None:
    """Steps 5 and 6 when no selection is needed: recorded as skipped, nothing removed.

    Parameters
    ----------
    plan
        The plan, whose record is extended.
    shape
        Cells x genes after step 4.
    settings
        The filter settings.
    source
        The input, named in the log line.
    """
    n_top = settings["n_top_genes"]
    note = (
        "skipped: n_top_genes is None"
        if n_top is None
        else f"skipped: {shape[1]} genes <= n_top_genes={n_top}"
    )
    logger.info("%s: highly variable genes %s", source, note)
    plan.record("5_highly_variable_genes", shape, shape, hvg=note)
    plan.record("6_drop_empty_after_hvg", shape, shape)


def record_hvg(plan: FilterPlan, before: Shape, after: Shape, source: str) -> None:
    """Step ``5_highly_variable_genes`` after a seurat_v3 selection.

    Parameters
    ----------
    plan
        The plan, whose record is extended (with the number of batches, if any).
    before, after
        Cells x genes before and after the selection.
    source
        The input, named in the log line.
    """
    extra = {} if plan.batches is None else {"hvg_batches": len(plan.batches.categories)}
    plan.record("5_highly_variable_genes", before, after, hvg="seurat_v3", **extra)
    logger.info(
        "%s: kept %d highly variable genes of %d (seurat_v3%s)",
        source,
        after[1],
        before[1],
        "" if not extra else f", ranked per batch in {extra['hvg_batches']} batches",
    )


def drop_cells_without_hvg_counts(
    plan: FilterPlan, has_counts: np.ndarray, n_genes: int, source: str
) -> None:
    """Step ``6_drop_empty_after_hvg``: record the cells with no counts in the selected genes.

    A count model cannot use a cell with no counts at all; the caller removes them.

    Parameters
    ----------
    plan
        The plan, whose record is extended.
    has_counts
        Boolean mask over the cells after step 5: counts in the selected genes.
    n_genes
        Number of selected genes.
    source
        The input, named in log lines and errors.

    Raises
    ------
    InputError
        If no cell has counts in the selected genes.
    """
    after_hvg = (has_counts.size, n_genes)
    if not has_counts.any():
        raise InputError(f"{source}: no cell has counts in the {n_genes} highly variable genes.")
    final = (int(has_counts.sum()), n_genes)
    plan.record("6_drop_empty_after_hvg", after_hvg, final)
    log_removed(source, "with no counts in the highly variable genes", after_hvg, final)


# --------------------------------------------------------------------------- batches


def batch_sizes(batches: pd.Categorical, keep: np.ndarray | None = None) -> dict[str, int]:
    """Cells per batch, every category included (0 for a batch with none left).

    Parameters
    ----------
    batches
        Each cell's batch.
    keep
        Boolean mask of the cells to count; None counts all.

    Returns
    -------
    dict
        Batch -> number of cells, in the order of the categories.
    """
    codes = np.asarray(batches.codes)
    if keep is not None:
        codes = codes[keep]
    counts = np.bincount(codes[codes >= 0], minlength=len(batches.categories))
    return {str(b): int(n) for b, n in zip(batches.categories, counts, strict=True)}


def check_batch_sizes(
    sizes: Mapping[str, int],
    read: Mapping[str, int],
    source: str,
    step: str,
    *,
    warn: bool = True,
) -> None:
    """Stop when a batch has fewer than :data:`MIN_BATCH_CELLS` cells; warn on small ones.

    Parameters
    ----------
    sizes
        Batch -> cells left after ``step``.
    read
        Batch -> cells read, named in the message.
    source
        The input, named in the message.
    step
        The step after which ``sizes`` were counted.
    warn
        Warn about batches with fewer than :data:`SMALL_BATCH_CELLS` cells (once per
        run: the first check).

    Raises
    ------
    InputError
        If a batch has fewer than :data:`MIN_BATCH_CELLS` cells; the message names
        every such batch with its cells left and read.
    """
    too_few = {b: n for b, n in sizes.items() if n < MIN_BATCH_CELLS}
    if too_few:
        listed = "; ".join(
            f"batch {b!r} has {n} cell(s) left of {read.get(b, n)} read" for b, n in too_few.items()
        )
        raise InputError(
            f"{source}: too few cells after step {step}: {listed}. Every batch needs at "
            f"least {MIN_BATCH_CELLS} cells, for highly variable genes per batch (seurat_v3 "
            "fits a variance trend in each) and for the batch's own parameters in a "
            "batch-aware model. Remove that batch's cells from the input, merge it with a "
            "similar batch, or loosen the cell filters."
        )
    if not warn:
        return
    for b, n in sizes.items():
        if n < SMALL_BATCH_CELLS:
            message = (
                f"{source}: batch {b!r} has only {n} cells, fewer than one minibatch "
                f"({SMALL_BATCH_CELLS} cells); its batch-specific parameters rest on few "
                "cells. Consider merging it with a similar batch."
            )
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)


def fit_variance_trend(mean: np.ndarray, variance: np.ndarray, *, span: float = 0.3) -> np.ndarray:
    """seurat_v3's trend: loess of log10 variance on log10 mean, over the non-constant genes.

    Parameters
    ----------
    mean, variance
        Per gene, over one batch's cells (variance with ddof 1).
    span
        Loess span (scanpy's default).

    Returns
    -------
    numpy.ndarray
        Per gene, the fitted log10 variance (0 for genes of zero variance), as scanpy's
        ``_highly_variable_genes_seurat_v3`` computes it.

    Raises
    ------
    ValueError
        When the fit is singular (scikit-misc's message), as on batches of few cells.
    """
    # Optional here: without scikit-misc the module loads and require_hvg_backend says so.
    from skmisc.loess import loess

    not_const = variance > 0
    fitted = np.zeros(mean.size, dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(variance[not_const]), span=span, degree=2)
    model.fit()
    fitted[not_const] = model.outputs.fitted_values
    return fitted


def loess_message(err: ValueError) -> str:
    """scikit-misc's loess error as one line of text (it raises bytes, ``b'...'``)."""
    arg = err.args[0] if err.args else str(err)
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    return " ".join(text.split())


def hvg_fit_error(source: str, failures: Mapping[str | None, tuple[int, float, str]]) -> InputError:
    """The error when seurat_v3's variance trend cannot be fitted in some batches.

    Parameters
    ----------
    source
        The input, named in the message.
    failures
        Batch (None: all cells, without batches) -> (cells, median counts per cell,
        the fit's error message).

    Returns
    -------
    InputError
        To raise.
    """
    listed = "; ".join(
        f"{'all cells' if b is None else f'batch {b!r}'} ({n} cells, median {m:,.0f} counts "
        f"per cell: {err})"
        for b, (n, m, err) in failures.items()
    )
    return InputError(
        f"{source}: highly variable genes (seurat_v3): the loess fit of variance on mean "
        f"failed in {listed}. The fit needs more cells when counts are shallow (many genes "
        "then share the same few mean values): merge the batch with a similar one or remove "
        "its cells, raise min_cells to drop rarely detected genes, or set n_top_genes to 0 "
        "to keep all genes."
    )


# ---------------------------------------------------------------------------- record


def store_record(
    adata: anndata.AnnData,
    plan: FilterPlan,
    settings: dict[str, Any],
    *,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
) -> None:
    """Write the settings and the steps to ``adata.uns["scvae"]["preprocess"]``.

    Parameters
    ----------
    adata
        The preprocessed data (its shape is recorded as the output's).
    plan
        The plan with every step recorded.
    settings
        The filter settings (None is stored as ``"none"``, so that h5ad can hold it).
    batch_key
        The obs column of the batch, recorded (with the cells per batch, as
        ``batch_cells``) when not None; later stages read the batch from it.
    covariate_keys
        The obs columns of the covariates, recorded as a list (empty without any).
    """
    scvae = dict(adata.uns.get("scvae", {}))
    scvae["preprocess"] = {
        "settings": {k: _serializable(v) for k, v in settings.items()},
        "steps": plan.steps,
        "n_mito_genes": plan.n_mito_genes,
        "cells_in": int(plan.cells.size),
        "genes_in": int(plan.genes.size),
        "cells_out": int(adata.n_obs),
        "genes_out": int(adata.n_vars),
        "covariate_keys": [str(k) for k in covariate_keys],
    }
    if batch_key is not None:
        scvae["preprocess"]["batch_key"] = batch_key
        batches = pd.Categorical(adata.obs[batch_key])
        scvae["preprocess"]["batch_cells"] = batch_sizes(batches)
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
