"""Marker genes of clusters and labels: scanpy's Wilcoxon test on log-normalized counts.

:func:`rank_markers` runs :func:`scanpy.tl.rank_genes_groups` (Wilcoxon rank-sum, one
group against the rest, Benjamini-Hochberg adjusted p-values, the fraction of cells
expressing each gene) on the raw counts of the cells, normalized to 10,000 per cell and
log1p-transformed, as scanpy's tutorials do; the result goes into ``uns[key_added]``
exactly as scanpy writes it, so that ``sc.get.rank_genes_groups_df`` and
``sc.pl.rank_genes_groups_dotplot`` read it. :func:`marker_table` turns it into a flat
table and :func:`marker_dotplot` draws the top genes per group (``scvae.tl.rank_markers``
and ``scvae.pl.marker_dotplot``). :func:`known_marker_dotplot` draws the expression of
genes the user names, the known markers of cell types (``scvae.pl.known_marker_dotplot``).

The ``cluster`` stage (:func:`scvae.stages.cluster.run_cluster`) calls these for the Leiden
clusters and, when the cells have labels, for the labels, and writes the dot plot with
:func:`plot_marker_dotplot`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from matplotlib.figure import Figure

from scvae.data.loaders import counts_matrix
from scvae.data.ondisk import is_ondisk
from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = [
    "DOTPLOT_GENES",
    "MARKER_COLUMNS",
    "MAX_MARKER_CELLS",
    "known_marker_dotplot",
    "log_normalized",
    "marker_cells",
    "marker_dotplot",
    "marker_table",
    "plot_marker_dotplot",
    "rank_markers",
]

log = logging.getLogger(__name__)

TARGET_SUM = 1e4
"""Counts per cell after normalization, before log1p (scanpy's tutorials' choice)."""

MARKER_COLUMNS = [
    "groupby",
    "group",
    "rank",
    "gene",
    "logfoldchange",
    "pval_adj",
    "frac_in_group",
    "frac_rest",
    "score",
]
"""Columns of :func:`marker_table` (and of the workflow's ``markers.tsv``)."""

MAX_MARKER_CELLS = 50_000
"""Random cells that :func:`rank_markers` tests and :func:`known_marker_dotplot` draws."""


def log_normalized(counts: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    """``log1p`` of counts scaled to :data:`TARGET_SUM` per cell (float32, CSR).

    Parameters
    ----------
    counts
        Raw counts, cells x genes.

    Returns
    -------
    scipy.sparse.csr_matrix
        The log-normalized values; a cell without counts stays all zero.
    """
    work = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32, copy=True))
    sc.pp.normalize_total(work, target_sum=TARGET_SUM)
    sc.pp.log1p(work)
    return sp.csr_matrix(work.X)


def _marker_rows(n_obs: int, max_cells: int, seed: int) -> np.ndarray:
    """The cells the test runs on: all of them, or ``max_cells`` random ones (sorted)."""
    if max_cells and n_obs > max_cells:
        # Wilcoxon ranks every gene over every cell: a random subset keeps the memory
        # and time bounded; the top markers of groups of hundreds of cells do not change.
        return np.sort(np.random.default_rng(seed).choice(n_obs, max_cells, replace=False))
    return np.arange(n_obs)


def _marker_cells(
    adata: ad.AnnData, groupby: str | Sequence[str], layer: str | None, rows: np.ndarray
) -> ad.AnnData:
    """A small AnnData of the log-normalized counts and the groups of ``rows``.

    ``groupby``: one obs column or several, each copied as categorical strings.
    """
    keys = [groupby] if isinstance(groupby, str) else list(groupby)
    for key in keys:
        if key not in adata.obs.columns:
            raise InputError(
                f"no obs column {key!r} to group the cells by (obs has {list(adata.obs.columns)})"
            )
    X = counts_matrix(adata, layer)
    # Counts on disk (a large file read backed) come into memory for the chosen rows only.
    X = X[rows] if len(rows) < adata.n_obs or is_ondisk(X) else X
    obs = pd.DataFrame(
        {key: adata.obs[key].iloc[rows].astype(str).values for key in keys},
        index=adata.obs_names[rows],
    )
    for key in keys:
        obs[key] = obs[key].astype("category")
    return ad.AnnData(log_normalized(X), obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))


def rank_markers(
    adata: ad.AnnData,
    groupby: str,
    *,
    layer: str | None = "counts",
    key_added: str = "rank_genes_groups",
    n_genes: int = 100,
    max_cells: int = MAX_MARKER_CELLS,
    seed: int = 0,
    copy: bool = False,
) -> ad.AnnData | None:
    """Rank marker genes of each group against the rest (Wilcoxon), into ``uns[key_added]``.

    Groups with fewer than 2 cells are left out (no test is possible); with fewer than 2
    groups left nothing is ranked and nothing written (a warning).

    Parameters
    ----------
    adata
        Cells with raw counts in ``layers[layer]`` (or ``X`` with None) and the groups
        in ``obs[groupby]``.
    groupby
        obs column of the groups (clusters or labels).
    layer
        Layer of the raw counts.
    key_added
        Key of the result in ``uns`` (scanpy's layout, with ``pts`` and ``pts_rest``).
    n_genes
        Genes kept per group, best first.
    max_cells
        Rank on at most this many random cells (0: all).
    seed
        Seed of that subset.
    copy
        Return a copy with the result instead of writing it into ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy when ``copy=True``, else None. Written: ``uns[key_added]``, the
        result of :func:`scanpy.tl.rank_genes_groups` (``names``, ``scores``,
        ``logfoldchanges``, ``pvals``, ``pvals_adj``, ``pts`` and ``pts_rest`` (for the
        ranked genes only), ``params``), whose ``params`` also hold ``target_sum``,
        ``n_cells`` (the cells tested), ``counts_layer`` (``""`` for ``X``) and ``seed``, from which
        :func:`marker_cells` rebuilds the cells tested. Read it with
        :func:`marker_table` or ``sc.get.rank_genes_groups_df``; draw it with
        :func:`marker_dotplot`.
    """
    adata = adata.copy() if copy else adata
    rows = _marker_rows(adata.n_obs, max_cells, seed)
    if len(rows) < adata.n_obs:
        log.info("marker genes on %d random cells of %d", len(rows), adata.n_obs)
    cells = _marker_cells(adata, groupby, layer, rows)
    sizes = cells.obs[groupby].value_counts()
    groups = sorted(str(g) for g in sizes.index[sizes >= 2])
    if len(groups) < 2:
        log.warning("marker genes by %r: fewer than 2 groups of 2+ cells; none ranked", groupby)
        return adata if copy else None
    if len(groups) < len(sizes):
        log.warning(
            "marker genes by %r: groups of one cell left out: %s",
            groupby,
            sorted(map(str, sizes.index[sizes < 2])),
        )
    sc.tl.rank_genes_groups(
        cells,
        groupby,
        groups=groups if len(groups) < len(sizes) else "all",
        method="wilcoxon",
        corr_method="benjamini-hochberg",
        pts=True,
        n_genes=min(n_genes, cells.n_vars),
        key_added=key_added,
    )
    result = cells.uns[key_added]
    # scanpy keeps the fraction of cells expressing every gene in every group; readers
    # (marker_table, sc.get.rank_genes_groups_df) look up the ranked genes only, and the
    # rest made up most of a run's final.h5ad.
    ranked = pd.unique(pd.DataFrame(result["names"]).to_numpy().ravel())
    for fractions in ("pts", "pts_rest"):
        result[fractions] = result[fractions].loc[ranked]
    result["params"]["target_sum"] = TARGET_SUM
    result["params"]["n_cells"] = int(cells.n_obs)
    # h5ad holds no None: the counts in X are recorded as "".
    result["params"]["counts_layer"] = layer or ""
    result["params"]["seed"] = int(seed)
    adata.uns[key_added] = result
    log.info("marker genes by %r in uns[%r] (%d groups)", groupby, key_added, len(groups))
    return adata if copy else None


def marker_cells(adata: ad.AnnData, key: str = "rank_genes_groups") -> ad.AnnData:
    """The log-normalized cells that :func:`rank_markers` tested, with its result.

    Rebuilt from ``uns[key]["params"]`` (the groups, the counts layer, the number of
    cells and the seed of their subset), for a plot of the expression the test saw.

    Parameters
    ----------
    adata
        The AnnData :func:`rank_markers` wrote ``uns[key]`` into, with its counts.
    key
        Key of the result in ``uns``.

    Returns
    -------
    anndata.AnnData
        The tested cells: log-normalized values in ``X``, the groups in
        ``obs[groupby]``, the result in ``uns[key]``.

    Raises
    ------
    InputError
        When ``uns[key]`` is missing or is not a result of :func:`rank_markers`.
    """
    result = adata.uns.get(key)
    params = result.get("params", {}) if isinstance(result, Mapping) else {}
    if "n_cells" not in params or "groupby" not in params:
        raise InputError(
            f"uns[{key!r}] is not a marker ranking of scvae.tl.rank_markers (uns has "
            f"{sorted(adata.uns)}); run it first or pass its key_added as key"
        )
    n_cells = int(params["n_cells"])
    # Rankings written before the layer and the seed were recorded used the defaults.
    layer = str(params.get("counts_layer", "counts")) or None
    max_cells = n_cells if n_cells < adata.n_obs else 0
    rows = _marker_rows(adata.n_obs, max_cells, int(params.get("seed", 0)))
    cells = _marker_cells(adata, str(params["groupby"]), layer, rows)
    cells.uns[key] = result
    return cells


def marker_table(
    adata: ad.AnnData, key: str = "rank_genes_groups", n_top: int = 10
) -> pd.DataFrame:
    """The top ``n_top`` marker genes of each group of ``uns[key]``, one row each.

    Parameters
    ----------
    adata
        An AnnData with the result of :func:`rank_markers`.
    key
        Its key in ``uns``.
    n_top
        Genes per group.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MARKER_COLUMNS`: the obs column (``groupby``), the group, the
        gene's rank (1 = best), its log2 fold change, the adjusted p-value, the fraction
        of the group's cells and of the other cells that express it, and the Wilcoxon
        z-score.
    """
    result = adata.uns[key]
    df = sc.get.rank_genes_groups_df(adata, group=None, key=key)
    if "group" not in df.columns:  # one group: scanpy leaves the column out
        df.insert(0, "group", str(list(result["names"].dtype.names)[0]))
    df["rank"] = df.groupby("group", observed=True).cumcount() + 1
    df = df[df["rank"] <= n_top]
    out = pd.DataFrame(
        {
            "groupby": str(result["params"]["groupby"]),
            "group": df["group"].astype(str).values,
            "rank": df["rank"].values,
            "gene": df["names"].astype(str).values,
            "logfoldchange": df["logfoldchanges"].values,
            "pval_adj": df["pvals_adj"].values,
            "frac_in_group": df["pct_nz_group"].values,
            "frac_rest": df["pct_nz_reference"].values,
            "score": df["scores"].values,
        }
    )
    return out[MARKER_COLUMNS].reset_index(drop=True)


DOTPLOT_GENES = 3
"""Top genes per group in the marker dot plots."""


def _dotplot(cells: ad.AnnData, key: str, n_genes: int, title: str) -> Figure:
    """The dot plot of ``cells.uns[key]``: colour the mean expression, size the fraction."""
    dot = sc.pl.rank_genes_groups_dotplot(
        cells,
        n_genes=n_genes,
        key=key,
        show=False,
        return_fig=True,
        title=title or None,
        dendrogram=False,
    )
    dot.make_figure()
    # scanpy draws through pyplot: out of its registry, a notebook does not show the
    # figure a second time and a script does not accumulate open figures.
    plt.close(dot.fig)
    return dot.fig


def _save_dotplot(fig: Figure, path: str | os.PathLike, *, tight: bool = True) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight" if tight else None)


def marker_dotplot(
    adata: ad.AnnData,
    *,
    key: str = "rank_genes_groups",
    n_genes: int = DOTPLOT_GENES,
    title: str = "",
    save: str | os.PathLike | None = None,
) -> Figure:
    """Dot plot of the top marker genes per group, on the cells the test ran on.

    Colour: the mean log-normalized expression in the group; size: the fraction of
    the group's cells that express the gene (scanpy's
    :func:`~scanpy.pl.rank_genes_groups_dotplot`).

    Parameters
    ----------
    adata
        Cells with the result of :func:`rank_markers` in ``uns[key]`` and the counts
        it ranked (:func:`marker_cells` rebuilds the tested cells).
    key
        Key of the ranking in ``uns``.
    n_genes
        Top genes per group.
    title
        Figure title.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).

    Raises
    ------
    InputError
        When ``uns[key]`` holds no ranking of :func:`rank_markers`.
    """
    fig = _dotplot(marker_cells(adata, key), key, n_genes, title)
    if save is not None:
        _save_dotplot(fig, save)
    return fig


def plot_marker_dotplot(
    cells: ad.AnnData | None,
    path: str | os.PathLike,
    *,
    key: str = "rank_genes_groups",
    n_genes: int = DOTPLOT_GENES,
    title: str = "",
    empty_note: str = "",
) -> None:
    """Write the dot plot of :func:`marker_dotplot` for the cells the test ran on.

    The ``cluster`` stage's ``markers.png``: it is written even when nothing was ranked.

    Parameters
    ----------
    cells
        The tested cells with their ranking (:func:`marker_cells`), or None: the
        figure then says that no markers were ranked.
    path
        PNG to write (atomically).
    key
        Key of the ranking in ``cells.uns``.
    n_genes
        Top genes per group.
    title
        Figure title.
    empty_note
        What the figure says when ``cells`` is None (default: fewer than 2 groups).
    """
    # The stage runs without a display: no interactive backend is ever needed.
    matplotlib.use("Agg")
    if cells is not None:
        _save_dotplot(_dotplot(cells, key, n_genes, title), path)
        return
    fig = Figure(figsize=(5, 2))
    ax = fig.subplots()
    ax.axis("off")
    note = empty_note or "no marker genes: fewer than 2 groups"
    ax.text(0.5, 0.5, note, ha="center", va="center")
    _save_dotplot(fig, path, tight=False)


def _known_genes(
    marker_genes: Mapping[str, Sequence[str]], var_names: pd.Index
) -> tuple[dict[str, list[str]], list[str]]:
    """The groups' genes found in ``var_names`` (groups left empty dropped), and the rest."""
    if not isinstance(marker_genes, Mapping):
        raise InputError(
            "marker_genes: expected a mapping of group name -> list of gene symbols, got "
            f"{type(marker_genes).__name__}"
        )
    present: dict[str, list[str]] = {}
    absent: list[str] = []
    for group, genes in marker_genes.items():
        # A bare string would be read letter by letter.
        if isinstance(genes, str) or not all(isinstance(g, str) for g in genes):
            raise InputError(
                f"marker_genes[{group!r}]: expected a list of gene symbols, got {genes!r}"
            )
        kept = [g for g in genes if g in var_names]
        absent += [g for g in genes if g not in var_names and g not in absent]
        if kept:
            present[str(group)] = kept
    return present, absent


def _group_order(source: pd.Series, found: pd.Index) -> list[str]:
    """The groups of ``found`` in the order of ``source``'s categories (Leiden: 0, 1, ... 10)."""
    if isinstance(source.dtype, pd.CategoricalDtype):
        order = [str(c) for c in source.cat.categories]
    else:
        order = sorted(
            map(str, found), key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g)
        )
    present = set(found)
    return [g for g in order if g in present]


# Inches per character of the tick and bracket labels (vertical gene and group names),
# of the y label beside the group names, and of the figure's title.
_CHAR = 0.09
_YLABEL_WIDTH = 0.5
_TITLE_HEIGHT = 0.4


def _known_dotplot(
    cells: ad.AnnData,
    marker_genes: dict[str, list[str]],
    keys: list[str],
    title: str,
    standard_scale: str | None,
) -> Figure:
    """One dot plot panel per obs column of ``keys``, stacked, on shared scales."""
    genes = list(dict.fromkeys(g for group in marker_genes.values() for g in group))
    values = pd.DataFrame(cells[:, genes].X.toarray(), columns=genes)
    vmax, dot_max = 0.0, 0.0
    for key in keys:
        groups = cells.obs[key].to_numpy()
        vmax = max(vmax, float(values.groupby(groups).mean().to_numpy().max()))
        dot_max = max(dot_max, float((values > 0).groupby(groups).mean().to_numpy().max()))
    # Each panel as tall as scanpy makes a dot plot of its own (a spacer, the brackets,
    # the rows), so that the layout inside it is scanpy's, in inches.
    dotplot = sc.pl.DotPlot
    row = dotplot.DEFAULT_CATEGORY_HEIGHT
    heights = [
        max(dotplot.MIN_FIGURE_HEIGHT, cells.obs[k].cat.categories.size * row + 1) for k in keys
    ]
    # Vertical group names longer than scanpy's spacer above the brackets reach above
    # the panel; the gene names hang below it.
    above = max(0.0, _CHAR * max(map(len, marker_genes)) + 0.3 - (1 - row / 2))
    below = _CHAR * max(map(len, genes)) + 0.2
    ratios = [h for height in heights for h in (above + below, height)][1:]
    top = above + (_TITLE_HEIGHT if title else 0.1)
    fig_height = top + sum(ratios) + below
    names = max(len(str(c)) for k in keys for c in cells.obs[k].cat.categories)
    left = _YLABEL_WIDTH + _CHAR * names
    n_columns = sum(len(group) for group in marker_genes.values())
    panel_width = n_columns * dotplot.DEFAULT_CATEGORY_WIDTH + dotplot.DEFAULT_LEGENDS_WIDTH
    fig_width = left + panel_width + 0.2
    fig = Figure(figsize=(fig_width, fig_height))
    grid = fig.add_gridspec(
        len(ratios),
        1,
        height_ratios=ratios,
        hspace=0,
        left=left / fig_width,
        right=1 - 0.2 / fig_width,
        top=1 - top / fig_height,
        bottom=below / fig_height,
    )
    for i, key in enumerate(keys):
        dot = sc.pl.DotPlot(
            cells,
            marker_genes,
            key,
            ax=fig.add_subplot(grid[2 * i]),
            standard_scale=standard_scale,
            # One colour and one size scale for every panel.
            vmin=0.0 if standard_scale is None else None,
            vmax=vmax if standard_scale is None else None,
        )
        dot.style(dot_max=dot_max, dot_min=0.0)
        if i:
            # The first panel's legends hold for all; the space stays, so that the
            # panels' columns line up.
            dot.legend(show_size_legend=False, show_colorbar=False)
        dot.make_figure()
        dot.get_axes()["mainplot_ax"].set_ylabel(key)
    if title:
        fig.suptitle(title)
    return fig


def known_marker_dotplot(
    adata: ad.AnnData,
    *,
    marker_genes: Mapping[str, Sequence[str]],
    groupby: str | Sequence[str],
    layer: str | None = "counts",
    standard_scale: str | None = None,
    max_cells: int = MAX_MARKER_CELLS,
    seed: int = 0,
    title: str = "",
    save: str | os.PathLike | None = None,
) -> Figure | None:
    """Dot plot of known marker genes of cell types, by cell-type label or cluster.

    scanpy's ``sc.pl.dotplot(adata, var_names={"B": ["MS4A1", "CD79A"], ...},
    groupby=...)`` on the counts normalized to 10,000 per cell and log1p-transformed,
    as :func:`rank_markers` tests them (the same cells: all, or the same random
    ``max_cells`` for a given ``seed``). Colour: the mean log-normalized expression of
    the gene in the group; size: the fraction of the group's cells that express it; a
    bracket over each group of genes. One panel per obs column of ``groupby`` (e.g.
    the labels and the Leiden clusters), stacked, on one colour and one size scale.
    Genes not in ``adata.var_names`` are left out with one warning naming them (a
    preprocessed file holds its highly variable genes only).

    Parameters
    ----------
    adata
        Cells with raw counts in ``layers[layer]`` (or ``X`` with None).
    marker_genes
        Group name (a cell type) -> its marker genes, as in ``adata.var_names``.
    groupby
        obs column of the rows (cell-type labels or clusters), or several: one panel
        each.
    layer
        Layer of the raw counts.
    standard_scale
        ``"var"`` (``"group"``): scale the means to 0-1 per gene (per row) in each
        panel, as scanpy's option does; None: the means themselves.
    max_cells
        Draw at most this many random cells (0: all).
    seed
        Seed of that subset.
    title
        Figure title.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure or None
        The figure; None (with a warning naming the genes, and nothing saved) when
        none of them is in ``adata``.

    Raises
    ------
    InputError
        When ``marker_genes`` is not a mapping of lists of gene symbols, or an obs
        column of ``groupby`` is missing.
    """
    keys = [groupby] if isinstance(groupby, str) else list(groupby)
    if not keys:
        raise InputError("groupby: no obs column given to group the cells by")
    present, absent = _known_genes(marker_genes, adata.var_names)
    if not present:
        log.warning(
            "none of the known marker genes %s is among the data's %d genes: no dot plot",
            absent,
            adata.n_vars,
        )
        return None
    if absent:
        log.warning(
            "known marker genes not among the data's %d genes, left out: %s",
            adata.n_vars,
            absent,
        )
    rows = _marker_rows(adata.n_obs, max_cells, seed)
    cells = _marker_cells(adata, keys, layer, rows)
    for key in keys:
        order = _group_order(adata.obs[key], cells.obs[key].cat.categories)
        cells.obs[key] = cells.obs[key].cat.reorder_categories(order)
    fig = _known_dotplot(cells, present, keys, title, standard_scale)
    if save is not None:
        _save_dotplot(fig, save)
    return fig
