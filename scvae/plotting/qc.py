"""Quality-control plot: counts, detected genes and mitochondrial fraction per cell.

With batches the figure has one row per batch, in the batch's colour, on the same bins
and x axes, so that a batch that is shallower, or that a threshold cuts into, stands out;
every row draws the thresholds and says how many of that batch's cells each removes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from scipy import sparse

from scvae.data.loaders import counts_data
from scvae.errors import InputError
from scvae.plotting.style import empty_panel, palette, save_figure

__all__ = ["plot_qc", "qc"]

_THRESHOLD_NAMES = ("min_counts", "max_counts", "min_genes", "max_mito_fraction")
_THRESHOLD_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.5}
_MEDIAN_STYLE = {"color": "0.3", "linestyle": ":", "linewidth": 1.5}
# Figure height in inches: one row alone, and per row with batches (rows shrink with
# many batches so that the figure stays readable on a screen).
_SINGLE_ROW_HEIGHT = 4.6
_BATCH_ROW_HEIGHT = {6: 2.7, 12: 2.2}
_MANY_BATCH_ROW_HEIGHT = 1.8


def qc(
    adata: anndata.AnnData,
    *,
    thresholds: Mapping[str, Any] | None = None,
    mito_prefix: str = "MT-",
    title: str | None = None,
    cell_metrics: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    batch_key: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Per-cell histograms of total counts, detected genes and mitochondrial fraction.

    Draw it on the data before filtering with the filter settings as ``thresholds``:
    the dashed lines and the legend then say how many cells each threshold removes.

    Parameters
    ----------
    adata
        Data with raw counts in ``layers["counts"]`` or, failing that, ``X``.
    thresholds
        Filter settings (:func:`scvae.preprocess.memory.preprocess` keywords); those of
        ``min_counts``, ``max_counts``, ``min_genes`` and ``max_mito_fraction`` that
        are not None are drawn.
    mito_prefix
        Name prefix of mitochondrial genes (case-insensitive).
    title
        Figure title; by default the input file name and the matrix size.
    cell_metrics
        ``(total counts, detected genes, mitochondrial fraction or None)`` per cell,
        when already computed (the out-of-core preprocessing streams them); ``adata``
        then only gives the title and the batches.
    batch_key
        obs column holding each cell's batch: one row of histograms per batch (in the
        order of its categories). None: one row for all cells.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).

    Raises
    ------
    InputError
        When ``batch_key`` is not a column of ``obs``.
    """
    if batch_key is not None and batch_key not in adata.obs:
        raise InputError(f"no obs column {batch_key!r} (batch_key) to split the QC plot by")
    thresholds = dict(thresholds or {})
    totals, n_genes, mito = cell_metrics or _cell_metrics(adata, mito_prefix)
    rows = _rows(adata, batch_key)
    fig = Figure(figsize=(15, _figure_height(len(rows))), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False, sharex="col")
    # Bins from all cells: the rows' histograms are comparable bar for bar.
    count_bins = _integer_log_bins_or_none(totals)
    gene_bins = _integer_log_bins_or_none(n_genes)
    for i, (label, mask, color) in enumerate(rows):
        ax_counts, ax_genes, ax_mito = axes[i]
        top, bottom = i == 0, i == len(rows) - 1
        _log_histogram(ax_counts, totals[mask], "total counts per cell", count_bins, color, top)
        _draw_thresholds(
            ax_counts, totals[mask], thresholds, ("min_counts", "max_counts"), integer=True
        )
        _log_histogram(ax_genes, n_genes[mask], "genes detected per cell", gene_bins, color, top)
        _draw_thresholds(ax_genes, n_genes[mask], thresholds, ("min_genes",), integer=True)
        if mito is None:
            note = f"no mitochondrial genes\n(no gene name starts with {mito_prefix!r})"
            _note_panel(ax_mito, note, top, fontsize=12 if len(rows) == 1 else 10)
        else:
            _mito_histogram(ax_mito, mito[mask], _mito_bins(mito), color, top)
            _draw_thresholds(ax_mito, mito[mask], thresholds, ("max_mito_fraction",))
        if label is not None:
            ax_counts.set_ylabel(f"{label}\nnumber of cells", fontsize=11)
        if not bottom:
            for ax in axes[i]:
                ax.set_xlabel("")
    if title is None:
        title = _default_title(adata, len(rows) if batch_key is not None else 0)
        if any(thresholds.get(k) is not None for k in _THRESHOLD_NAMES):
            title += " (red dashed lines: filter thresholds)"
    fig.suptitle(title, fontsize=13)
    if save is not None:
        save_figure(fig, save, tight=False)
    return fig


def plot_qc(adata: anndata.AnnData, path: str | os.PathLike, **options: Any) -> None:
    """Write the figure of :func:`qc` to ``path`` (the preprocessing stage's ``qc.png``).

    Parameters
    ----------
    adata
        As :func:`qc`.
    path
        PNG to write (atomically).
    **options
        The keyword options of :func:`qc`.
    """
    qc(adata, save=path, **options)


def _rows(
    adata: anndata.AnnData, batch_key: str | None
) -> list[tuple[str | None, np.ndarray, Any]]:
    """``(row label, cells of the row, colour)``: all cells, or one row per batch."""
    if batch_key is None:
        return [(None, np.ones(adata.n_obs, dtype=bool), "tab:blue")]
    batches = adata.obs[batch_key].astype("category")
    names = [b for b in batches.cat.categories if (batches == b).any()]
    colors = palette(len(names))
    rows = []
    for name, color in zip(names, colors, strict=True):
        mask = np.asarray(batches == name)
        rows.append((f"{name}\n({int(mask.sum()):,} cells)", mask, color))
    return rows


def _figure_height(n_rows: int) -> float:
    if n_rows == 1:
        return _SINGLE_ROW_HEIGHT
    per_row = next(
        (h for most, h in _BATCH_ROW_HEIGHT.items() if n_rows <= most), _MANY_BATCH_ROW_HEIGHT
    )
    return 1.0 + per_row * n_rows


def _counts_matrix(adata: anndata.AnnData) -> sparse.csr_matrix:
    return sparse.csr_matrix(counts_data(adata))


def _cell_metrics(
    adata: anndata.AnnData, mito_prefix: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    X = _counts_matrix(adata)
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_genes = np.asarray((X > 0).sum(axis=1)).ravel()
    is_mito = adata.var_names.astype(str).str.upper().str.startswith(mito_prefix.upper())
    if not np.any(is_mito):
        return totals, n_genes, None
    mito_counts = np.asarray(X[:, np.asarray(is_mito)].sum(axis=1)).ravel()
    mito = np.divide(mito_counts, totals, out=np.zeros_like(totals, dtype=float), where=totals > 0)
    return totals, n_genes, mito


def _log_histogram(
    ax: Axes, values: np.ndarray, quantity: str, bins: np.ndarray | None, color: Any, top: bool
) -> None:
    # Log-spaced bins over the positive values; cells at 0 cannot sit on a log axis
    # and are reported in the title instead.
    positive = values[values > 0]
    n_zero = int(values.size - positive.size)
    if positive.size and bins is not None:
        ax.hist(positive, bins=bins, color=color, alpha=0.8)
        ax.axvline(np.median(values), label=f"median {np.median(values):,.0f}", **_MEDIAN_STYLE)
    ax.set_xscale("log")
    # Plain numbers (30, 100, 300) read better than 3x10^1, and minor labels would
    # overlap when the data span less than a decade.
    decades = np.log10(bins[-1] / bins[0]) if bins is not None else 0.0
    subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{quantity} (log scale)")
    ax.set_ylabel("number of cells")
    heading = quantity.capitalize() if top else ""
    note = f"({n_zero} cells at 0 not shown)" if n_zero else ""
    size = {} if top else {"fontsize": 9}  # the top row keeps the default title size
    ax.set_title("\n".join(t for t in (heading, note) if t), **size)
    ax.grid(alpha=0.3)


def _integer_log_bins_or_none(values: np.ndarray) -> np.ndarray | None:
    positive = values[values > 0]
    return _integer_log_bins(positive) if positive.size else None


def _integer_log_bins(values: np.ndarray, n_bins: int = 60) -> np.ndarray:
    # Counts are integers: edges at half-integers keep narrow low bins from falling
    # between two integers and showing as gaps.
    lo, hi = float(values.min()), float(values.max())
    edges = np.unique(np.round(np.geomspace(lo, hi + 1, n_bins))) - 0.5
    if edges.size < 2:
        edges = np.array([lo - 0.5, hi + 0.5])
    return np.clip(edges, lo / 2, None)


def _mito_bins(mito: np.ndarray) -> np.ndarray:
    return np.linspace(0, max(float(mito.max()), 0.05) * 1.02, 60)


def _mito_histogram(ax: Axes, mito: np.ndarray, bins: np.ndarray, color: Any, top: bool) -> None:
    # One batch keeps tab:orange apart from the counts panels' blue, as without batches.
    ax.hist(mito, bins=bins, color="tab:orange" if color == "tab:blue" else color, alpha=0.8)
    ax.axvline(np.median(mito), label=f"median {np.median(mito):.3f}", **_MEDIAN_STYLE)
    ax.set_xlabel("fraction of counts in mitochondrial genes")
    ax.set_ylabel("number of cells")
    if top:
        ax.set_title("Mitochondrial fraction per cell")
    ax.grid(alpha=0.3)


def _draw_thresholds(
    ax: Axes,
    values: np.ndarray,
    thresholds: Mapping[str, Any],
    names: tuple[str, ...],
    *,
    integer: bool = False,
) -> None:
    for name in names:
        limit = thresholds.get(name)
        if limit is None:
            continue
        is_max = name.startswith("max")
        removed = values > limit if is_max else values < limit
        # On integer bins the cut lies between limit and its neighbour, on a bin edge.
        shift = (0.5 if is_max else -0.5) if integer else 0.0
        ax.axvline(
            limit + shift,
            label=f"{name} = {limit:g}: removes {int(removed.sum())} of {values.size}",
            **_THRESHOLD_STYLE,
        )
    n_entries = len(ax.get_legend_handles_labels()[0])
    if n_entries:
        # Headroom above the bars so that the legend does not hide them.
        ax.set_ylim(0, ax.get_ylim()[1] * (1.1 + 0.1 * n_entries))
        ax.legend(loc="upper right", fontsize=9, framealpha=0.9)


def _note_panel(ax: Axes, text: str, top: bool, *, fontsize: float) -> None:
    empty_panel(ax, text, color=None, fontsize=fontsize)
    if top:
        ax.set_title("Mitochondrial fraction per cell")


def _default_title(adata: anndata.AnnData, n_batches: int) -> str:
    source = adata.uns.get("scvae", {}).get("input", {})
    if not isinstance(source, Mapping) or "path" not in source:
        name = "QC"
    elif "samples" in source:
        name = f"{len(source['samples'])} samples"
    else:
        name = Path(str(source["path"])).name
    batches = f" in {n_batches} batches" if n_batches else ""
    return f"{name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes{batches}"
