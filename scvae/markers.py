"""Marker genes of clusters and labels: scanpy's Wilcoxon test on log-normalized counts.

:func:`rank_markers` runs :func:`scanpy.tl.rank_genes_groups` (Wilcoxon rank-sum, one
group against the rest, Benjamini-Hochberg adjusted p-values, the fraction of cells
expressing each gene) on the raw counts of the cells, normalized to 10,000 per cell and
log1p-transformed, as scanpy's tutorials do; the result goes into ``uns[key_added]``
exactly as scanpy writes it, so that ``sc.get.rank_genes_groups_df`` and
``sc.pl.rank_genes_groups_dotplot`` read it. :func:`marker_table` turns it into a flat
table and :func:`plot_marker_dotplot` draws the top genes per group.

The ``cluster`` stage (:func:`scvae.cluster.run_cluster`) calls these for the Leiden
clusters and, when the cells have labels, for the labels.
"""

from __future__ import annotations

import logging
import os

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvae.data.loaders import counts_matrix
from scvae.data.ondisk import is_ondisk
from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = [
    "MARKER_COLUMNS",
    "log_normalized",
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
    import scanpy as sc

    work = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32, copy=True))
    sc.pp.normalize_total(work, target_sum=TARGET_SUM)
    sc.pp.log1p(work)
    return sp.csr_matrix(work.X)


def _marker_cells(
    adata: ad.AnnData, groupby: str, layer: str | None, max_cells: int, seed: int
) -> ad.AnnData:
    """A small AnnData of log-normalized counts and the groups (a random subset if large)."""
    if groupby not in adata.obs.columns:
        raise InputError(f"no obs column {groupby!r} to rank marker genes by")
    groups = adata.obs[groupby]
    rows = np.arange(adata.n_obs)
    if max_cells and adata.n_obs > max_cells:
        # Wilcoxon ranks every gene over every cell: a random subset keeps the memory
        # and time bounded; the top markers of groups of hundreds of cells do not change.
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
        log.info("marker genes on %d random cells of %d", max_cells, adata.n_obs)
    X = counts_matrix(adata, layer)
    # Counts on disk (a large file read backed) come into memory for the chosen rows only.
    X = X[rows] if len(rows) < adata.n_obs or is_ondisk(X) else X
    obs = pd.DataFrame({groupby: groups.iloc[rows].astype(str).values}, index=adata.obs_names[rows])
    obs[groupby] = obs[groupby].astype("category")
    return ad.AnnData(log_normalized(X), obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))


def rank_markers(
    adata: ad.AnnData,
    groupby: str,
    *,
    layer: str | None = "counts",
    key_added: str = "rank_genes_groups",
    n_genes: int = 100,
    max_cells: int = 50_000,
    seed: int = 0,
) -> ad.AnnData | None:
    """Rank marker genes of each group against the rest (Wilcoxon), into ``uns[key_added]``.

    Groups with fewer than 2 cells are left out (no test is possible); with fewer than 2
    groups left nothing is ranked (a warning, None returned).

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

    Returns
    -------
    anndata.AnnData or None
        The log-normalized cells the test ran on (for :func:`plot_marker_dotplot`), or
        None when there were fewer than two groups to compare.
    """
    import scanpy as sc

    cells = _marker_cells(adata, groupby, layer, max_cells, seed)
    sizes = cells.obs[groupby].value_counts()
    groups = sorted(str(g) for g in sizes.index[sizes >= 2])
    if len(groups) < 2:
        log.warning("marker genes by %r: fewer than 2 groups of 2+ cells; none ranked", groupby)
        return None
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
    result["params"]["target_sum"] = TARGET_SUM
    result["params"]["n_cells"] = int(cells.n_obs)
    adata.uns[key_added] = result
    log.info("marker genes by %r in uns[%r] (%d groups)", groupby, key_added, len(groups))
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
    import scanpy as sc

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


def plot_marker_dotplot(
    cells: ad.AnnData | None,
    path: str | os.PathLike,
    *,
    key: str = "rank_genes_groups",
    n_genes: int = 3,
    title: str = "",
    empty_note: str = "",
) -> None:
    """Dot plot of the top genes per group: colour the mean expression, size the fraction.

    Parameters
    ----------
    cells
        The AnnData :func:`rank_markers` returned (log-normalized values), or None: the
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    with atomic_path(path) as tmp:
        if cells is None:
            fig, ax = plt.subplots(figsize=(5, 2))
            ax.axis("off")
            note = empty_note or "no marker genes: fewer than 2 groups"
            ax.text(0.5, 0.5, note, ha="center", va="center")
            fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            return
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
        dot.fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(dot.fig)
