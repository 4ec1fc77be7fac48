"""Comparison figures: KL per dimension, MI and active units, scores, scIB, UMAPs, curves.

Each function draws one PNG and writes it atomically, with the conventions of
:mod:`scvae.plotting.style` (no pyplot, one DPI).

The per-run tables are the output of :func:`scvae.compare.collect` (one row per
variant x seed, baselines included).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anndata as ad
import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from scvae.errors import InputError
from scvae.integration import (
    BATCH_METRICS,
    BIO_METRICS,
    LABEL_FREE_BATCH_METRICS,
    SCIB_AGGREGATES,
    scib_key,
)
from scvae.metrics import ari
from scvae.plotting.style import empty_panel, offsets, palette, save_figure

__all__ = [
    "plot_kl_heatmap",
    "plot_mi_au",
    "plot_scib_table",
    "plot_scores",
    "plot_training_curves",
    "plot_umap_grid",
    "umap",
]

# The posterior-draw score is the one to trust for collapse (scvae.scores.posterior_sample_scores).
_SCORE_METRICS = ["kmeans_ari", "kmeans_ari_sample", "kmeans_nmi", "leiden_ari", "leiden_nmi"]
_UNLABELLED_METRICS = ["silhouette", "modularity"]
_METRIC_NAMES = {
    "kmeans_ari": "KMeans ARI",
    "kmeans_ari_sample": "KMeans ARI (posterior draw)",
    "kmeans_nmi": "KMeans NMI",
    "leiden_ari": "Leiden ARI",
    "leiden_nmi": "Leiden NMI",
    "silhouette": "silhouette (clusters)",
    "modularity": "modularity",
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _variants(df: pd.DataFrame) -> list[str]:
    """Variants in first-seen order, VAE variants before baselines."""
    order = list(dict.fromkeys(df["variant"].astype(str)))
    if "kind" not in df:
        return order
    kind = df.groupby("variant", sort=False)["kind"].first()
    return [v for v in order if kind.get(v) != "baseline"] + [
        v for v in order if kind.get(v) == "baseline"
    ]


# --------------------------------------------------------------------------------------
# KL per dimension
# --------------------------------------------------------------------------------------


def plot_kl_heatmap(
    df_kl_per_dim: pd.DataFrame, path: str | os.PathLike, *, title: str | None = None
) -> None:
    """Heatmap of the KL divergence per latent dimension, variants x dimensions.

    Collapsed dimensions show as near-zero columns. Values are written in the cells
    when the grid is small enough to read them; NaN cells (a variant with fewer
    dimensions) are grey.

    Parameters
    ----------
    df_kl_per_dim
        Variants as index, dimensions as columns, KL in nats (for example
        :func:`scvae.compare.collect_kl_per_dim`). The columns' name, if set, is used
        as the x-axis label.
    path
        PNG to write.
    title
        Figure title; a default one otherwise.
    """
    data = df_kl_per_dim.astype(float)
    n_rows, n_cols = data.shape
    fig = Figure(figsize=(max(5.0, 0.55 * n_cols + 3.0), max(2.5, 0.45 * n_rows + 1.6)))
    ax = fig.subplots()
    if data.size == 0:
        empty_panel(ax, "no per-dimension KL available")
    else:
        cmap = mpl.colormaps["viridis"].with_extremes(bad="0.85")
        image = ax.imshow(np.ma.masked_invalid(data.to_numpy()), aspect="auto", cmap=cmap, vmin=0)
        cbar = fig.colorbar(image, ax=ax, pad=0.02)
        cbar.set_label("KL per dimension (nats)")
        ax.set_xticks(range(n_cols), [str(c) for c in data.columns])
        ax.set_yticks(range(n_rows), [str(i) for i in data.index])
        if n_rows * n_cols <= 400:
            vmax = np.nanmax(data.to_numpy())
            for (i, j), value in np.ndenumerate(data.to_numpy()):
                if np.isfinite(value):
                    colour = "black" if value > 0.6 * vmax else "white"
                    ax.text(
                        j, i, f"{value:.2g}", ha="center", va="center", fontsize=7, color=colour
                    )
    ax.set_xlabel(data.columns.name or "latent dimension")
    ax.set_ylabel("variant")
    ax.set_title(title or "KL(q(z|x) || p(z)) per latent dimension (mean over cells and seeds)")
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# MI and active units
# --------------------------------------------------------------------------------------


def _seed_strip(ax: Axes, df: pd.DataFrame, variants: list[str], column: str) -> None:
    """Seeds as points (collapsed runs as red crosses) and the mean as a bar."""
    for i, variant in enumerate(variants):
        runs = df[df["variant"].astype(str) == variant]
        values = runs[column].to_numpy(dtype=float)
        ok = np.isfinite(values)
        if not ok.any():
            continue
        collapsed = runs["collapsed"].to_numpy(dtype=bool) if "collapsed" in runs else ~ok
        x = i + offsets(len(values))
        ax.scatter(x[ok & ~collapsed], values[ok & ~collapsed], color="C0", s=28, zorder=3)
        ax.scatter(
            x[ok & collapsed], values[ok & collapsed], color="C3", marker="x", s=36, zorder=3
        )
        ax.hlines(np.nanmean(values), i - 0.3, i + 0.3, color="black", lw=2, zorder=2)


def plot_mi_au(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Mutual information I(x; z) and active units per variant, with the seed spread.

    Each seed is a point (red cross if the run is collapsed), the black bar is the
    mean over seeds; in the active-units panel a grey dash marks ``n_latent``. Rows
    without diagnostics (baselines) are left out.

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.compare.collect` (columns ``variant``, ``mi``,
        ``active_units``, ``n_latent`` and optionally ``collapsed``).
    path
        PNG to write.
    """
    has_diag = df[["mi", "active_units"]].astype(float).notna().any(axis=1)
    data = df[has_diag]
    variants = _variants(data) if len(data) else []
    fig = Figure(figsize=(max(7.0, 1.4 * len(variants) + 3.0), 4.2), layout="constrained")
    ax_mi, ax_au = fig.subplots(1, 2)
    if not variants:
        empty_panel(ax_mi, "no diagnostics")
        empty_panel(ax_au, "no diagnostics")
    else:
        _seed_strip(ax_mi, data, variants, "mi")
        _seed_strip(ax_au, data, variants, "active_units")
        n_latent = data.groupby("variant", sort=False)["n_latent"].max()
        for i, variant in enumerate(variants):
            if np.isfinite(n_latent.get(variant, np.nan)):
                ax_au.hlines(n_latent[variant], i - 0.35, i + 0.35, color="0.6", ls="--", lw=1.5)
        for ax in (ax_mi, ax_au):
            ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
            ax.set_xlim(-0.6, len(variants) - 0.4)
            ax.set_xlabel("variant")
            ax.grid(axis="y", alpha=0.3)
        # a little below 0 so that zero-valued (collapsed) seeds stay visible
        for ax in (ax_mi, ax_au):
            ax.set_ylim(bottom=-0.04 * max(ax.get_ylim()[1], 1e-9))
    ax_mi.set_ylabel("I(x; z) (nats)")
    ax_mi.set_title("Mutual information between x and z")
    ax_au.set_ylabel("active latent units")
    ax_au.set_title("Active units (of n_latent)")
    handles = [
        Line2D([], [], color="C0", marker="o", ls="", label="seed"),
        Line2D([], [], color="C3", marker="x", ls="", label="collapsed seed"),
        Line2D([], [], color="black", lw=2, label="mean over seeds"),
        Line2D([], [], color="0.6", ls="--", lw=1.5, label="n_latent"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# clustering scores
# --------------------------------------------------------------------------------------


def plot_scores(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """ARI and NMI (KMeans and Leiden) per variant, baselines included.

    Bars are means over seeds with the sample standard deviation as error bars;
    each seed is a dot. Baselines are hatched and listed after the VAE variants;
    unavailable ones are marked ``n/a``. Without labels the panel shows silhouette and
    modularity of the Leiden clusters instead.

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.compare.collect`.
    path
        PNG to write.
    """
    numeric = df.copy()
    present = [m for m in _SCORE_METRICS if m in numeric and numeric[m].notna().any()]
    labelled = bool(present)
    if not labelled:
        present = [m for m in _UNLABELLED_METRICS if m in numeric and numeric[m].notna().any()]
    variants = _variants(numeric) if len(numeric) else []
    fig = Figure(figsize=(max(7.0, 0.9 * len(variants) * max(1, len(present)) / 2 + 3), 4.5))
    ax = fig.subplots()
    if not present or not variants:
        empty_panel(ax, "no clustering metrics")
    else:
        _score_bars(ax, numeric, variants, present)
    ax.set_xlabel("variant")
    ax.set_ylabel("score (higher is better)")
    ax.set_title(
        "Agreement of clusters with cell-type labels (mean ± sd over seeds)"
        if labelled
        else "Cluster quality without labels (mean ± sd over seeds)"
    )
    save_figure(fig, path)


def _score_bars(ax: Axes, df: pd.DataFrame, variants: list[str], metrics: list[str]) -> None:
    width = 0.8 / len(metrics)
    kind = df.groupby("variant", sort=False)["kind"].first() if "kind" in df else pd.Series()
    colours = palette(len(metrics))
    for j, metric in enumerate(metrics):
        for i, variant in enumerate(variants):
            values = df.loc[df["variant"].astype(str) == variant, metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            x = i - 0.4 + width * (j + 0.5)
            if values.size == 0:
                if j == 0:
                    ax.text(i, 0.02, "n/a", ha="center", va="bottom", color="0.4")
                continue
            sd = values.std(ddof=1) if values.size > 1 else 0.0
            hatch = "//" if kind.get(variant) == "baseline" else None
            ax.bar(
                x,
                values.mean(),
                width,
                yerr=sd,
                color=colours[j],
                hatch=hatch,
                edgecolor="white",
                capsize=2,
                error_kw={"lw": 1},
            )
            ax.scatter(x + offsets(values.size, width * 0.6), values, s=8, color="black", zorder=3)
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(variants) - 0.4)
    top = np.nanmax(df[metrics].to_numpy(dtype=float))
    ax.set_ylim(min(0.0, np.nanmin(df[metrics].to_numpy(dtype=float))), max(1.0, top) * 1.05)
    ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=colours[j], label=_METRIC_NAMES.get(m, m)) for j, m in enumerate(metrics)
    ]
    handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="baseline"))
    handles.append(Line2D([], [], color="black", marker="o", ls="", markersize=3, label="seed"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# --------------------------------------------------------------------------------------
# scIB results table
# --------------------------------------------------------------------------------------

_SCIB_NAMES = {
    "total": "Total",
    "bio": "Bio\nconservation",
    "batch": "Batch\ncorrection",
    "isolated_labels": "Isolated\nlabels",
    "leiden_nmi": "Leiden\nNMI",
    "leiden_ari": "Leiden\nARI",
    "kmeans_nmi": "KMeans\nNMI",
    "kmeans_ari": "KMeans\nARI",
    "silhouette_label": "Silhouette\nlabel",
    "clisi": "cLISI",
    "silhouette_batch": "Silhouette\nbatch",
    "bras": "BRAS",
    "ilisi": "iLISI",
    "kbet": "kBET",
    "kbet_global": "kBET\n(all cells)",
    "graph_connectivity": "Graph\nconnectivity",
    "pcr_comparison": "PCR\ncomparison",
}
_SCIB_GROUPS = (
    ("Aggregate score", SCIB_AGGREGATES),
    ("Bio conservation", BIO_METRICS),
    ("Batch correction", tuple(dict.fromkeys(BATCH_METRICS + LABEL_FREE_BATCH_METRICS))),
)


def plot_scib_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """The scIB metrics of every run of a dataset as a table, best ``scib_total`` first.

    One row per run (variant and seed, baselines included), one column per scIB
    aggregate and metric that some run has, grouped as aggregates, bio conservation
    and batch correction. Each cell holds the value (unscaled, higher is better) on a
    colour scaled within its column, so that the best run of each metric stands out;
    grey where a run has no value.

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.compare.collect` with ``scib_*`` columns.
    path
        PNG to write.
    """
    groups = [
        (title, [m for m in names if scib_key(m) in df and df[scib_key(m)].notna().any()])
        for title, names in _SCIB_GROUPS
    ]
    groups = [(title, names) for title, names in groups if names]
    metrics = [m for _, names in groups for m in names]
    rows = df
    if metrics:
        sort_by = scib_key(metrics[0])
        rows = df.sort_values(sort_by, ascending=False, na_position="last", kind="stable")
    fig = Figure(
        figsize=(max(6.0, 0.95 * len(metrics) + 3.0), max(2.6, 0.36 * len(rows) + 2.0)),
        layout="constrained",
    )
    ax = fig.subplots()
    if not metrics or rows.empty:
        empty_panel(ax, "no scIB metrics (the dataset has no batches)")
        ax.set_title("scIB metrics")
        save_figure(fig, path)
        return
    values = rows[[scib_key(m) for m in metrics]].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        shade = np.where(hi > lo, (values - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)
    cmap = mpl.colormaps["YlGnBu"].with_extremes(bad="0.85")
    ax.imshow(
        np.ma.masked_invalid(np.where(np.isnan(values), np.nan, 0.1 + 0.7 * shade)),
        cmap=cmap,
        vmin=0,
        vmax=1,
        aspect="auto",
    )
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = shade[i, j] > 0.6
            weight = "bold" if j < len(groups[0][1]) and groups[0][0] == "Aggregate score" else None
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
                weight=weight,
            )
    seeds = rows["seed"].astype("Float64")
    labels = [
        f"{v} s{int(sd)}" if pd.notna(sd) else str(v)
        for v, sd in zip(rows["variant"].astype(str), seeds, strict=True)
    ]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xticks(range(len(metrics)), [_SCIB_NAMES.get(m, m) for m in metrics], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    left = 0
    for title, names in groups:
        if left:
            ax.axvline(left - 0.5, color="white", lw=3)
        ax.text(
            (left + left + len(names) - 1) / 2,
            len(rows) - 0.5 + 0.35,
            title,
            ha="center",
            va="top",
            fontsize=9,
            weight="bold",
        )
        left += len(names)
    ax.set_ylim(len(rows) - 0.5 + 0.8, -0.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(
        "scIB metrics of each run (unscaled, higher is better; colour scaled within each "
        "column)\ntotal = 0.6 bio conservation + 0.4 batch correction",
        fontsize=10,
    )
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# UMAP grid
# --------------------------------------------------------------------------------------


def _scatter_categories(
    ax: Axes,
    xy: np.ndarray,
    values: pd.Series,
    categories: Sequence[str],
    size: float,
    colours: Sequence | None = None,
) -> list:
    colours = dict(zip(categories, colours or palette(len(categories)), strict=True))
    values = values.astype(str).to_numpy()
    handles = []
    for cat in categories:
        mask = values == cat
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colours[cat], lw=0, rasterized=True)
        handles.append(Line2D([], [], color=colours[cat], marker="o", ls="", label=cat))
    return handles


def _umap_axes(ax: Axes) -> None:
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])


def _sorted_categories(values: Sequence) -> list[str]:
    """Category names, numerically sorted when they are all integers."""
    names = sorted({str(v) for v in values if not pd.isna(v)})
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


def _cluster_panel(
    ax: Axes,
    name: str,
    adata: ad.AnnData,
    xy: np.ndarray,
    size: float,
    label_key: str,
    cluster_key: str,
) -> None:
    """UMAP coloured by cluster, ids at the clusters' medians, ARI against the labels."""
    if cluster_key in adata.obs:
        clusters = adata.obs[cluster_key]
        cats = _sorted_categories(clusters.unique())
        _scatter_categories(ax, xy, clusters, cats, size)
        clusters_str = clusters.astype(str).to_numpy()
        for cat in cats:
            centre = np.median(xy[clusters_str == cat], axis=0)
            ax.text(
                *centre,
                cat,
                fontsize=10,
                weight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0},
            )
        title = f"{name}: Leiden clusters ({len(cats)}, ids on the plot)"
        if label_key in adata.obs and adata.obs[label_key].notna().all():
            title += f"\nARI vs labels = {ari(adata.obs[label_key], clusters):.3f}"
        ax.set_title(title)
    else:
        empty_panel(ax, f"no obs[{cluster_key!r}]")
        ax.set_title(f"{name}: no clusters")


def _batch_title(name: str, adata: ad.AnnData, batch_key: str) -> str:
    """Panel title: the number of batches and, when scored, the scIB batch correction."""
    title = f"{name}: batch ({adata.obs[batch_key].nunique()})"
    metrics = adata.uns.get("scvae", {}).get("cluster", {}).get("metrics", {})
    value = metrics.get(scib_key("batch")) if isinstance(metrics, Mapping) else None
    if value is not None and np.isfinite(float(value)):
        title += f"\nscIB batch correction = {float(value):.3f}"
    return title


def plot_umap_grid(
    adatas: Mapping[str, ad.AnnData],
    path: str | os.PathLike | None,
    label_key: str = "label",
    cluster_key: str = "scvae_leiden",
    batch_key: str | None = None,
) -> Figure:
    """UMAPs of several variants: one row per variant, by label, batch and cluster.

    Label colours are shared across rows (same cell type, same colour) with one
    legend; cluster ids are written at each cluster's median position, and the panel
    title gives the number of clusters and their ARI against the labels. With a
    ``batch_key`` that some of the data have in ``obs``, a middle column colours the
    cells by batch (colours shared across rows, a legend below), so that a batch
    effect shows next to the cell types; its title gives the scIB batch-correction
    score when ``uns["scvae"]["cluster"]["metrics"]`` holds it.

    Parameters
    ----------
    adatas
        ``{variant name: AnnData}`` with ``obsm["X_umap"]`` (from
        :func:`scvae.clustering.cluster`).
    path
        PNG to write; None: none.
    label_key
        Column of ``obs`` with cell-type labels (panels say so when absent).
    cluster_key
        Column of ``obs`` with the clusters.
    batch_key
        Column of ``obs`` with the batches; None (or a column none of the data have)
        leaves the batch column out.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (its axes titles say what each panel shows).
    """
    names = list(adatas)
    label_values = [
        v for a in adatas.values() if label_key in a.obs for v in a.obs[label_key].unique()
    ]
    label_cats = _sorted_categories(label_values)
    with_batch = batch_key is not None and any(batch_key in a.obs for a in adatas.values())
    batch_cats = (
        _sorted_categories(
            [v for a in adatas.values() if batch_key in a.obs for v in a.obs[batch_key].unique()]
        )
        if with_batch
        else []
    )
    # Not the label colours: a batch must not look like a cell type of the next panel.
    batch_colours = (
        [mpl.colormaps["Dark2"](i) for i in range(len(batch_cats))]
        if len(batch_cats) <= 8
        else palette(len(batch_cats))[::-1]
    )
    n_rows, n_cols = max(1, len(names)), 3 if with_batch else 2
    fig = Figure(figsize=(5.75 * n_cols, 4.6 * n_rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    label_handles: list = []
    batch_handles: list = []
    for row, name in enumerate(names):
        adata = adatas[name]
        ax_label, ax_cluster = axes[row, 0], axes[row, -1]
        if "X_umap" not in adata.obsm:
            for ax in axes[row]:
                empty_panel(ax, f"{name}: no obsm['X_umap']")
            continue
        xy = np.asarray(adata.obsm["X_umap"])
        size = float(np.clip(12000 / max(adata.n_obs, 1), 1.0, 25.0))
        if label_key in adata.obs:
            label_handles = (
                _scatter_categories(ax_label, xy, adata.obs[label_key], label_cats, size)
                or label_handles
            )
            ax_label.set_title(f"{name}: cell-type label ({adata.obs[label_key].nunique()})")
        else:
            empty_panel(ax_label, f"no obs[{label_key!r}]")
            ax_label.set_title(f"{name}: no labels")
        if with_batch:
            ax_batch = axes[row, 1]
            if batch_key in adata.obs:
                batch_handles = (
                    _scatter_categories(
                        ax_batch, xy, adata.obs[batch_key], batch_cats, size, batch_colours
                    )
                    or batch_handles
                )
                ax_batch.set_title(_batch_title(name, adata, batch_key))
            else:
                empty_panel(ax_batch, f"no obs[{batch_key!r}]")
                ax_batch.set_title(f"{name}: no batches")
            _umap_axes(ax_batch)
        _cluster_panel(ax_cluster, name, adata, xy, size, label_key, cluster_key)
        _umap_axes(ax_label)
        _umap_axes(ax_cluster)
    if not names:
        for ax in axes[0]:
            empty_panel(ax, "no variants")
    if label_handles:
        fig.legend(
            handles=label_handles,
            title=label_key,
            loc="outside right upper",
            frameon=False,
            markerscale=1.5,
            ncols=1 if len(label_handles) <= 20 else 2,
        )
    if batch_handles:
        fig.legend(
            handles=batch_handles,
            title=batch_key,
            loc="outside lower center",
            frameon=False,
            markerscale=1.5,
            ncols=min(len(batch_handles), 8),
        )
    fig.suptitle(
        "UMAP of each embedding: cell-type labels (left), batches (middle) and Leiden "
        "clusters (right)"
        if with_batch
        else "UMAP of each embedding: cell-type labels (left) and Leiden clusters (right)"
    )
    if path is not None:
        save_figure(fig, path)
    return fig


def umap(
    adata: ad.AnnData,
    *,
    label_key: str = "label",
    cluster_key: str | None = None,
    batch_key: str | None = None,
    name: str = "cells",
    save: str | os.PathLike | None = None,
) -> Figure:
    """UMAP of one embedding by cell-type label, batch and Leiden cluster.

    One row of :func:`plot_umap_grid`: the label colours with their legend, the
    cluster ids at each cluster's median with the ARI against the labels in the
    title, and with ``batch_key`` a middle panel by batch (with the scIB batch
    correction when :func:`scvae.integration.integration_scores` stored it).

    Parameters
    ----------
    adata
        Cells with ``obsm["X_umap"]`` (:func:`scvae.clustering.cluster`).
    label_key
        obs column of the cell-type labels (the panel says so when absent).
    cluster_key
        obs column of the clusters; None: the one :func:`scvae.clustering.cluster`
        recorded in ``uns["scvae"]["cluster"]["params"]`` (its ``key_added``).
    batch_key
        obs column of the batches; None: no batch panel.
    name
        Name at the start of each panel's title.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).

    Raises
    ------
    InputError
        When ``adata`` has no ``obsm["X_umap"]``, or ``cluster_key`` is None and no
        clustering is recorded.
    """
    if "X_umap" not in adata.obsm:
        raise InputError("no obsm['X_umap'] to draw; run scvae.tl.cluster (with umap=True) first")
    if cluster_key is None:
        params = adata.uns.get("scvae", {}).get("cluster", {}).get("params", {})
        if "key" not in params:
            raise InputError(
                "no clustering recorded in uns['scvae']['cluster']['params']; run "
                "scvae.tl.cluster first or pass cluster_key"
            )
        cluster_key = str(params["key"])
    return plot_umap_grid(
        {name: adata}, save, label_key=label_key, cluster_key=cluster_key, batch_key=batch_key
    )


# --------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------


def _late_ylim(ax: Axes, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Zoom the y axis on the epochs after the first 10 % when early ones squash them.

    Early epochs of an ELBO or KL curve are often orders of magnitude off the
    converged values, which then look flat; the zoom keeps convergence readable and
    the panel says that the first epochs run off the scale.
    """
    late, everything = [], []
    for epoch, values in curves:
        ok = np.isfinite(values)
        if ok.sum() < 10:
            continue
        cut = np.quantile(epoch[ok], 0.1)
        late.append(values[ok & (epoch >= cut)])
        everything.append(values[ok])
    if not late:
        return
    late_all, full = np.concatenate(late), np.concatenate(everything)
    lo, hi = late_all.min(), late_all.max()
    if hi > lo and full.max() - full.min() > 3 * (hi - lo):
        pad = 0.08 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        ax.text(
            0.99,
            0.02,
            "zoomed on the last 90 % of epochs; the first ones run off the scale",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.4",
        )


def plot_training_curves(histories: Mapping[str, pd.DataFrame], path: str | os.PathLike) -> None:
    """ELBO, KL and KL weight against epoch, one colour per run.

    Three stacked panels sharing the epoch axis: training ELBO (solid) and
    validation ELBO (dashed); KL term, training (solid) and validation (dashed);
    KL weight (annealing schedule). Missing
    columns are skipped. When the first epochs are far off the rest, the y axis is
    zoomed on the last 90 % of epochs (noted on the panel).

    Parameters
    ----------
    histories
        ``{run name: history}``, each with columns ``epoch``, ``train_elbo``,
        ``val_elbo``, ``kl`` (or ``train_kl`` and ``val_kl``, as in the training
        stage's ``history.tsv``) and ``kl_weight``.
    path
        PNG to write.
    """
    fig = Figure(figsize=(9.5, 9.0), layout="constrained")
    ax_elbo, ax_kl, ax_w = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2, 1.3])
    colours = dict(zip(histories, palette(len(histories)), strict=True))
    elbo_curves, kl_curves = [], []
    for name, hist in histories.items():
        epoch = hist["epoch"].to_numpy(dtype=float) if "epoch" in hist else np.arange(len(hist))
        c = colours[name]
        for col, ls in (("train_elbo", "-"), ("val_elbo", "--")):
            if col in hist:
                ax_elbo.plot(epoch, hist[col], color=c, ls=ls, lw=1.4)
                elbo_curves.append((epoch, hist[col].to_numpy(dtype=float)))
        for col, ls in (("kl", "-"), ("train_kl", "-"), ("val_kl", "--")):
            if col in hist:
                ax_kl.plot(epoch, hist[col], color=c, ls=ls, lw=1.4)
                kl_curves.append((epoch, hist[col].to_numpy(dtype=float)))
        if "kl_weight" in hist:
            ax_w.plot(epoch, hist["kl_weight"], color=c, lw=1.4)
    _late_ylim(ax_elbo, elbo_curves)
    _late_ylim(ax_kl, kl_curves)
    ax_elbo.set_ylabel("ELBO (higher is better)")
    ax_elbo.set_title("Training curves")
    ax_kl.set_ylabel("KL(q(z|x) || p(z)) (nats)")
    ax_w.set_ylabel("KL weight")
    ax_w.set_xlabel("epoch")
    for ax in (ax_elbo, ax_kl, ax_w):
        ax.grid(alpha=0.3)
    if not histories:
        empty_panel(ax_elbo, "no training history")
    run_handles = [Line2D([], [], color=colours[n], lw=2, label=n) for n in histories]
    style_handles = [
        Line2D([], [], color="0.3", ls="-", label="train"),
        Line2D([], [], color="0.3", ls="--", label="validation"),
    ]
    # One legend per axes: an extra legend added with add_artist is not counted by
    # bbox_inches="tight" and gets clipped.
    ax_kl.legend(
        handles=run_handles,
        title="run",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    ax_elbo.legend(
        handles=style_handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), frameon=False
    )
    save_figure(fig, path)
