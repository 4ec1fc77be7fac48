"""Quality-control plot: counts, detected genes and mitochondrial fraction per cell."""

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

from scvae.plotting.style import empty_panel, save_figure

_THRESHOLD_NAMES = ("min_counts", "max_counts", "min_genes", "max_mito_fraction")
_THRESHOLD_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1.5}
_MEDIAN_STYLE = {"color": "0.3", "linestyle": ":", "linewidth": 1.5}


def plot_qc(
    adata: anndata.AnnData,
    path: str | os.PathLike,
    *,
    thresholds: Mapping[str, Any] | None = None,
    mito_prefix: str = "MT-",
    title: str | None = None,
    cell_metrics: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
) -> None:
    """Write a PNG with per-cell histograms of counts, detected genes and mito fraction.

    Draw it on the data before filtering with the filter settings as ``thresholds``:
    the dashed lines and the legend then say how many cells each threshold removes.

    Parameters
    ----------
    adata
        Data with raw counts in ``layers["counts"]`` or, failing that, ``X``.
    path
        Destination ``.png``, written atomically.
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
        then only gives the title.
    """
    thresholds = dict(thresholds or {})
    totals, n_genes, mito = cell_metrics or _cell_metrics(adata, mito_prefix)
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_counts, ax_genes, ax_mito = fig.subplots(1, 3)
    _log_histogram(ax_counts, totals, "total counts per cell")
    _draw_thresholds(ax_counts, totals, thresholds, ("min_counts", "max_counts"), integer=True)
    _log_histogram(ax_genes, n_genes, "genes detected per cell")
    _draw_thresholds(ax_genes, n_genes, thresholds, ("min_genes",), integer=True)
    if mito is None:
        _note_panel(ax_mito, f"no mitochondrial genes\n(no gene name starts with {mito_prefix!r})")
    else:
        _mito_histogram(ax_mito, mito)
        _draw_thresholds(ax_mito, mito, thresholds, ("max_mito_fraction",))
    if title is None:
        title = _default_title(adata)
        if any(thresholds.get(k) is not None for k in _THRESHOLD_NAMES):
            title += " (red dashed lines: filter thresholds)"
    fig.suptitle(title, fontsize=13)
    save_figure(fig, path, tight=False)


def _counts_matrix(adata: anndata.AnnData) -> sparse.csr_matrix:
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    return sparse.csr_matrix(X)


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


def _log_histogram(ax: Axes, values: np.ndarray, quantity: str) -> None:
    # Log-spaced bins over the positive values; cells at 0 cannot sit on a log axis
    # and are reported in the title instead.
    positive = values[values > 0]
    n_zero = int(values.size - positive.size)
    if positive.size:
        ax.hist(positive, bins=_integer_log_bins(positive), color="tab:blue", alpha=0.8)
        ax.axvline(np.median(values), label=f"median {np.median(values):,.0f}", **_MEDIAN_STYLE)
    ax.set_xscale("log")
    # Plain numbers (30, 100, 300) read better than 3x10^1, and minor labels would
    # overlap when the data span less than a decade.
    decades = np.log10(positive.max() / positive.min()) if positive.size else 0.0
    subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{quantity} (log scale)")
    ax.set_ylabel("number of cells")
    ax.set_title(quantity.capitalize() + (f"\n({n_zero} cells at 0 not shown)" if n_zero else ""))
    ax.grid(alpha=0.3)


def _integer_log_bins(values: np.ndarray, n_bins: int = 60) -> np.ndarray:
    # Counts are integers: edges at half-integers keep narrow low bins from falling
    # between two integers and showing as gaps.
    lo, hi = float(values.min()), float(values.max())
    edges = np.unique(np.round(np.geomspace(lo, hi + 1, n_bins))) - 0.5
    if edges.size < 2:
        edges = np.array([lo - 0.5, hi + 0.5])
    return np.clip(edges, lo / 2, None)


def _mito_histogram(ax: Axes, mito: np.ndarray) -> None:
    ax.hist(mito, bins=np.linspace(0, max(float(mito.max()), 0.05) * 1.02, 60), color="tab:orange")
    ax.axvline(np.median(mito), label=f"median {np.median(mito):.3f}", **_MEDIAN_STYLE)
    ax.set_xlabel("fraction of counts in mitochondrial genes")
    ax.set_ylabel("number of cells")
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


def _note_panel(ax: Axes, text: str) -> None:
    empty_panel(ax, text, color=None, fontsize=12)
    ax.set_title("Mitochondrial fraction per cell")


def _default_title(adata: anndata.AnnData) -> str:
    try:
        name = Path(adata.uns["scvae"]["input"]["path"]).name
    except (KeyError, TypeError):
        name = "QC"
    return f"{name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes"
