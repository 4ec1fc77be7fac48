"""Figures of the collapse atlas: sweeps, remedies, KL vs sensitivity, MI identity.

Each function draws one PNG and writes it atomically, with the conventions of
:mod:`scvae.plotting.style` (no pyplot, one DPI).

The inputs are the run records of :func:`scvae.atlas.jobs.run_atlas_job` (one dict per run
and seed) or their table, :func:`scvae.atlas.tables.collect`. :func:`write_atlas_figures`
draws every figure whose data are present.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from scvae.atlas.tables import RESTORE_TOLERANCE, collect
from scvae.diagnostics.verdicts import VerdictThresholds, is_collapsed
from scvae.plotting.style import empty_panel, offsets, palette, save_figure

__all__ = [
    "plot_kl_vs_sensitivity",
    "plot_means_vs_sample",
    "plot_mi_identity",
    "plot_remedies",
    "plot_sweeps",
    "plot_vicious_cycle",
    "write_atlas_figures",
]

logger = logging.getLogger(__name__)

_DATASET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
_COLLAPSED_COLOUR = "tab:red"
# The MI line drawn on the sweeps: the verdict's threshold of a collapsed code.
_COLLAPSE_MI = VerdictThresholds().min_mi
_HEALTHY_COLOUR = "tab:blue"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _float(value: Any) -> float:
    """``value`` as a float; ``None`` (JSON null) and non-numbers become NaN."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _floats(values: Any) -> np.ndarray:
    """A list that may hold ``None`` (JSON null) as a float array with NaN."""
    if values is None:
        return np.zeros(0)
    return np.array([_float(v) for v in values], dtype=np.float64)


def _names(values: Any) -> list[str]:
    """Distinct non-empty names in first-seen order (NaN and ``None`` dropped)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "":
            continue
        out.append(str(v))
    return list(dict.fromkeys(out))


def _datasets(df: pd.DataFrame) -> list[str]:
    return sorted(_names(df["dataset"])) if "dataset" in df else []


def _dataset_colours(datasets: Sequence[str]) -> dict[str, Any]:
    # Colours come from the sorted list of every dataset in the table, so a dataset keeps
    # its colour in every figure drawn from the same table.
    return dict(zip(datasets, palette(len(datasets)), strict=True))


def _ordered(data: pd.DataFrame, column: str) -> list[str]:
    """Values of ``column`` sorted by the run's ``order`` (first one seen per order)."""
    if data.empty:
        return []
    first = data.sort_values("order", kind="stable").drop_duplicates(column)
    return [str(v) for v in first[column]]


def _categorical_xticks(ax: Axes, labels: Sequence[str]) -> None:
    long = max((len(s) for s in labels), default=0) > 6 or len(labels) > 6
    ax.set_xticks(
        range(len(labels)), labels, rotation=30 if long else 0, ha="right" if long else "center"
    )
    ax.set_xlim(-0.6, len(labels) - 0.4)


def _zero_floor(ax: Axes) -> None:
    # A little below 0 so that zero-valued (collapsed) runs stay visible off the frame.
    top = ax.get_ylim()[1]
    ax.set_ylim(bottom=-0.04 * max(top, 1e-9))


def _note(ax: Axes, message: str) -> None:
    """A grey message in the middle of ``ax``; ticks kept, unlike ``empty_panel``.

    Clearing the ticks of an axes with shared axes would clear them on its siblings.
    """
    ax.text(
        0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True
    )


def _legends(fig: Figure, datasets: Sequence[str], colours: Mapping, styles: list) -> None:
    """Datasets (colours) on the right, line and marker styles below the panels.

    Two legends, so that a colour is never read as a style; both sit outside the axes.
    """
    if datasets:
        fig.legend(
            handles=[Line2D([], [], color=colours[d], lw=2.5, label=d) for d in datasets],
            title="dataset",
            loc="outside right center",
            frameon=False,
        )
    fig.legend(handles=styles, loc="outside lower center", ncols=3, frameon=False)


def _slug(name: str) -> str:
    """``name`` made safe as part of a file name."""
    return re.sub(r"[^\w.-]+", "_", name) or "_"


def _healthy_mean(df: pd.DataFrame, dataset: str, column: str) -> float:
    rows = df[(df["stage"] == "healthy") & (df["dataset"] == dataset)]
    values = rows[column].to_numpy(dtype=float) if column in rows else np.zeros(0)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _collapsed(df: pd.DataFrame) -> np.ndarray:
    if "collapsed" in df:
        return df["collapsed"].fillna(False).to_numpy(dtype=bool)
    return np.asarray(
        is_collapsed(
            df.get("verdict"),
            mi=df.get("mi"),
            kl_total=df.get("kl_total"),
            active_units=df.get("active_units"),
        ),
        dtype=bool,
    )


# --------------------------------------------------------------------------------------
# sweeps and remedies: MI, active units and ARI in three rows
# --------------------------------------------------------------------------------------


def _collapse_lines(ax_mi: Axes, ax_au: Axes, data: pd.DataFrame) -> None:
    """The collapse threshold on the MI row and ``n_latent`` on the active-units row."""
    ax_mi.axhline(_COLLAPSE_MI, color="0.25", ls=":", lw=1.3)
    n_latent = np.nanmax(data["n_latent"].to_numpy(dtype=float))
    if np.isfinite(n_latent):
        ax_au.axhline(n_latent, color="0.5", ls=":", lw=1.3)


def _collapse_handles() -> list[Line2D]:
    """Legend entries of :func:`_collapse_lines`."""
    return [
        Line2D([], [], color="0.25", ls=":", lw=1.3, label=f"collapse: MI = {_COLLAPSE_MI} nats"),
        Line2D([], [], color="0.5", ls=":", lw=1.3, label="n_latent"),
    ]


def _label_mi_au(ax_mi: Axes, ax_au: Axes) -> None:
    ax_mi.set_ylabel("I(x; z) (nats)")
    ax_mi.set_title("Mutual information between x and z", fontsize=10)
    ax_au.set_ylabel("active latent units")
    ax_au.set_title("Active units", fontsize=10)


def _sweep_lines(
    axes: Sequence[Axes],
    df: pd.DataFrame,
    runs: pd.DataFrame,
    dataset: str,
    position: Mapping,
    colour: Any,
) -> None:
    """One dataset's sweep: means over seeds as lines, seeds as dots when there are several."""
    ax_mi, ax_au, ax_ari = axes
    x_all = runs["point"].astype(str).map(position).to_numpy(dtype=float)
    means = runs.assign(_x=x_all).groupby("_x")[
        ["mi", "active_units", "kmeans_ari", "kmeans_ari_sample"]
    ]
    means = means.mean().sort_index()
    x = means.index.to_numpy(dtype=float)
    several = runs.groupby("point").size().max() > 1
    series = (
        (ax_mi, "mi", "-", "o"),
        (ax_au, "active_units", "-", "o"),
        (ax_ari, "kmeans_ari", "-", "o"),
        (ax_ari, "kmeans_ari_sample", "--", "s"),
    )
    for ax, column, ls, marker in series:
        ax.plot(x, means[column], color=colour, ls=ls, marker=marker, ms=5, lw=1.6)
        if several:
            ax.scatter(x_all, runs[column], color=colour, s=10, alpha=0.5, lw=0, marker=marker)
    healthy = _healthy_mean(df, dataset, "mi")
    if np.isfinite(healthy):
        ax_mi.axhline(healthy, color=colour, ls="--", lw=1.1, alpha=0.8)


def plot_sweeps(df: pd.DataFrame, mechanism: str, path: str | os.PathLike) -> None:
    """Collapse diagnostics and clustering along one mechanism's sweep.

    Three rows share the x axis (the sweep points in their order): mutual information
    I(x; z) with the collapse threshold (dotted) and each dataset's healthy reference
    (dashed); active units with ``n_latent`` (dotted); KMeans ARI against the
    cell-type labels on the posterior means (solid) and on one posterior draw per cell
    (dashed). One colour per dataset; lines join the means over seeds, and each seed
    is a small dot when there are several.

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.atlas.tables.collect`; the rows of stage
        ``sweep`` and this mechanism are drawn, the ``healthy`` rows give the reference.
    mechanism
        Mechanism name.
    path
        PNG to write.
    """
    data = df[(df["stage"] == "sweep") & (df["mechanism"] == mechanism)]
    datasets = _datasets(df)
    colours = _dataset_colours(datasets)
    points = _ordered(data, "point")
    fig = Figure(figsize=(max(7.0, 0.9 * len(points) + 4.0), 9.5), layout="constrained")
    axes = ax_mi, ax_au, ax_ari = fig.subplots(3, 1, sharex=True)
    drawn: list[str] = []
    if not points:
        for ax in axes:
            empty_panel(ax, f"no sweep runs of {mechanism}")
    else:
        position = {p: i for i, p in enumerate(points)}
        for dataset in datasets:
            runs = data[data["dataset"] == dataset]
            if runs.empty:
                continue
            drawn.append(dataset)
            _sweep_lines(axes, df, runs, dataset, position, colours[dataset])
        _collapse_lines(ax_mi, ax_au, data)
        for ax in axes:
            ax.grid(alpha=0.3)
            _zero_floor(ax)
        _categorical_xticks(ax_ari, points)
    _label_mi_au(ax_mi, ax_au)
    ax_ari.set_ylabel("KMeans ARI vs cell-type labels")
    ax_ari.set_title("Clustering of the latent space", fontsize=10)
    ax_ari.set_xlabel(f"{mechanism} sweep point")
    fig.suptitle(
        f"Sweep of {mechanism}: collapse and clustering\n(lines: mean over seeds; "
        f"{len(drawn)} dataset{'s' if len(drawn) != 1 else ''})"
    )
    handles = [
        Line2D([], [], color="0.3", marker="o", ms=5, label="ARI on posterior means"),
        Line2D([], [], color="0.3", ls="--", marker="s", ms=5, label="ARI on a posterior draw"),
        Line2D([], [], color="0.3", ls="--", lw=1.1, label="healthy reference MI"),
        *_collapse_handles(),
    ]
    _legends(fig, drawn, colours, handles)
    save_figure(fig, path)


def _mean_sd_dots(ax: Axes, x: float, values: np.ndarray, colour: Any) -> None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    sd = values.std(ddof=1) if values.size > 1 else 0.0
    ax.errorbar(x, values.mean(), yerr=sd, fmt="o", color=colour, ms=6, capsize=3, lw=1.4, zorder=3)
    # Seeds just right of the mean, so that the mean marker does not hide them.
    ax.scatter(np.full(values.size, x + 0.06), values, color=colour, s=9, alpha=0.7, lw=0, zorder=4)


def _remedy_dots(
    axes: Sequence[Axes],
    df: pd.DataFrame,
    runs: pd.DataFrame,
    dataset: str,
    remedies: Sequence[str],
    shift: float,
    colour: Any,
) -> None:
    """One dataset's remedies (mean ± sd and seeds) and its healthy band on the ARI row."""
    ax_mi, ax_au, ax_ari = axes
    for i, remedy in enumerate(remedies):
        rows = runs[runs["remedy"].astype(str) == remedy]
        for ax, column in ((ax_mi, "mi"), (ax_au, "active_units"), (ax_ari, "kmeans_ari_sample")):
            _mean_sd_dots(ax, i + shift, rows[column].to_numpy(dtype=float), colour)
    healthy = _healthy_mean(df, dataset, "kmeans_ari_sample")
    if np.isfinite(healthy):
        ax_ari.axhspan(healthy - RESTORE_TOLERANCE, healthy, color=colour, alpha=0.1, lw=0)
        ax_ari.axhline(healthy, color=colour, lw=1.2)
        ax_ari.axhline(healthy - RESTORE_TOLERANCE, color=colour, lw=1.0, ls="--")


def plot_remedies(df: pd.DataFrame, mechanism: str, path: str | os.PathLike) -> None:
    """Each remedy of one mechanism against the healthy reference, per dataset.

    Three rows share the x axis (the remedies in their order, ``none`` being the
    collapsing setting itself): mutual information, active units and KMeans ARI on one
    posterior draw per cell. Each dataset is a colour, slightly shifted sideways: mean
    ± standard deviation over seeds with the seeds as small dots. In the ARI row a
    solid line marks the healthy reference (mean over its seeds) and a dashed one the
    target ``healthy - 0.05`` (:data:`scvae.atlas.tables.RESTORE_TOLERANCE`); the band
    between them is "within 0.05 of healthy".

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.atlas.tables.collect` (rows of stage ``remedy``
        of this mechanism, and the ``healthy`` rows).
    mechanism
        Mechanism name.
    path
        PNG to write.
    """
    data = df[(df["stage"] == "remedy") & (df["mechanism"] == mechanism)]
    datasets = _datasets(df)
    colours = _dataset_colours(datasets)
    remedies = _ordered(data, "remedy")
    fig = Figure(figsize=(max(7.0, 1.1 * len(remedies) + 4.0), 9.5), layout="constrained")
    axes = ax_mi, ax_au, ax_ari = fig.subplots(3, 1, sharex=True)
    drawn = [d for d in datasets if (data["dataset"] == d).any()]
    if not remedies:
        for ax in axes:
            empty_panel(ax, f"no remedy runs of {mechanism}")
    else:
        shifts = offsets(len(drawn), min(0.5, 0.15 * len(drawn)))
        for dataset, shift in zip(drawn, shifts, strict=True):
            runs = data[data["dataset"] == dataset]
            _remedy_dots(axes, df, runs, dataset, remedies, shift, colours[dataset])
        _collapse_lines(ax_mi, ax_au, data)
        for ax in axes:
            ax.grid(axis="y", alpha=0.3)
            _zero_floor(ax)
        _categorical_xticks(ax_ari, remedies)
    point = _names(data["point"])
    _label_mi_au(ax_mi, ax_au)
    ax_ari.set_ylabel("KMeans ARI vs labels\n(one posterior draw)")
    ax_ari.set_title(
        f"Clustering of one posterior draw per cell (band: within {RESTORE_TOLERANCE} "
        "of the healthy reference)",
        fontsize=10,
    )
    ax_ari.set_xlabel("remedy")
    fig.suptitle(
        f"Remedies for {mechanism}"
        + (f" (collapsing setting {', '.join(point)})" if point else "")
        + f"\n(mean ± sd over seeds; {len(drawn)} dataset{'s' if len(drawn) != 1 else ''})"
    )
    handles = [
        Line2D([], [], color="0.3", marker="o", ls="", label="mean ± sd over seeds"),
        Line2D([], [], color="0.3", marker="o", ms=3, ls="", label="seed"),
        Line2D([], [], color="0.3", lw=1.2, label="healthy reference ARI"),
        Line2D([], [], color="0.3", lw=1.0, ls="--", label=f"healthy - {RESTORE_TOLERANCE}"),
        *_collapse_handles(),
    ]
    _legends(fig, drawn, colours, handles)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# KL vs decoder sensitivity
# --------------------------------------------------------------------------------------


def _first_seed(records: Sequence[Mapping]) -> Mapping | None:
    return min(records, key=lambda r: int(r.get("seed", 0))) if records else None


def _best_remedy(records: Sequence[Mapping]) -> str | None:
    """The remedy (``none`` excluded) with the highest mean ARI on a posterior draw."""
    scores: dict[str, list[float]] = {}
    order: dict[str, int] = {}
    for r in records:
        remedy = str(r.get("remedy"))
        if remedy == "none":
            continue
        scores.setdefault(remedy, []).append(_float(r.get("kmeans_ari_sample")))
        order.setdefault(remedy, int(r.get("order", 0)))
    means = {
        k: float(np.nanmean(v)) if np.isfinite(v).any() else -math.inf for k, v in scores.items()
    }
    if not means:
        return None
    # Ties go to the remedy listed first in the config.
    return max(means, key=lambda k: (means[k], -order[k]))


def _kl_sens_panel(ax: Axes, record: Mapping | None, floor: float, title: str) -> None:
    if record is None:
        ax.set_title(title, fontsize=9)
        _note(ax, "no run")
        return
    kl = _floats(record.get("kl_per_dim"))
    sens = _floats(record.get("sensitivity_per_dim"))
    mi, au = _float(record.get("mi")), _float(record.get("active_units"))
    n_latent = _float(record.get("n_latent"))
    au_text = f"{au:.0f}/{n_latent:.0f}" if np.isfinite(au) and np.isfinite(n_latent) else "?"
    ax.set_title(f"{title}\nseed {record.get('seed')}: MI {mi:.2f} nats, AU {au_text}", fontsize=9)
    if kl.size == 0 or kl.size != sens.size:
        _note(ax, "no KL / sensitivity per dimension")
        return
    low = ~(np.isfinite(sens) & (sens > floor))
    y = np.where(low, floor, sens)
    x = np.nan_to_num(kl, nan=0.0)
    ax.scatter(x[~low], y[~low], color=_HEALTHY_COLOUR, s=40, zorder=3)
    ax.scatter(x[low], y[low], color="0.45", marker="v", s=40, zorder=3)
    # Labels on a small circle around each point: coincident points (several collapsed
    # dimensions at KL 0) keep readable labels.
    for d in range(kl.size):
        angle = 2 * math.pi * d / max(kl.size, 1) + math.pi / 4
        ax.annotate(
            str(d),
            (x[d], y[d]),
            xytext=(9 * math.cos(angle), 9 * math.sin(angle)),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=7,
            color="0.2",
        )


def _remedy_panels(
    remedy_recs: Sequence[Mapping],
) -> tuple[list[str], list[tuple[Mapping | None, str]]]:
    """Mechanisms, and per mechanism the runs without and with its best remedy.

    Returns
    -------
    tuple
        The mechanisms in first-seen order, and ``(record or None, title)`` per panel:
        for each mechanism its collapsing setting without remedy, then its best remedy
        (each the run of its smallest seed).
    """
    mechanisms = _names(r.get("mechanism") for r in remedy_recs)
    panels: list[tuple[Mapping | None, str]] = []
    for mech in mechanisms:
        mine = [r for r in remedy_recs if r.get("mechanism") == mech]
        none = [r for r in mine if r.get("remedy") == "none"]
        point = none[0].get("point") if none else mine[0].get("point")
        panels.append((_first_seed(none), f"{mech}: no remedy ({point})"))
        best = _best_remedy(mine)
        chosen = [r for r in mine if r.get("remedy") == best]
        panels.append((_first_seed(chosen), f"{mech}: best remedy, {best or 'none'}"))
    return mechanisms, panels


def _kl_sens_axes(
    axes: np.ndarray, legend_ax: Axes | None, floor: float, positive: np.ndarray
) -> None:
    """Log sensitivity axes shared by every panel (``legend_ax`` holds only the legend)."""
    any_data = False
    for ax in axes.flat:
        if ax is legend_ax:
            continue
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelbottom=True)
        any_data = any_data or bool(ax.collections)
    if any_data:
        # Room around the extreme points for the index labels, and below the floor so
        # that the triangles of zero sensitivity are not cut by the frame.
        lo, hi = axes[0, 0].get_xlim()
        span = max(hi, 1e-3)
        axes[0, 0].set_xlim(-0.08 * span, hi + 0.08 * span)
        top = float(positive.max()) if positive.size else floor * 10
        axes[0, 0].set_ylim(floor / 3, top * 3)


def plot_kl_vs_sensitivity(
    records: Sequence[Mapping], dataset: str, path: str | os.PathLike
) -> None:
    """KL against decoder sensitivity per latent dimension: collapsed, remedied, healthy.

    One column per mechanism: on top its collapsing setting without remedy, below its
    best remedy (highest mean KMeans ARI on a posterior draw over seeds); the last
    column holds the healthy reference. Each panel is one run (its smallest seed), one
    point per latent dimension labelled with its index. All panels share their axes;
    sensitivity is on a log scale with zeros drawn as triangles at a floor below the
    smallest positive value.

    Parameters
    ----------
    records
        Run records of :func:`scvae.atlas.jobs.run_atlas_job` (stages ``remedy`` and
        ``healthy`` are used).
    dataset
        Dataset to draw.
    path
        PNG to write.
    """
    recs = [r for r in records if str(r.get("dataset")) == dataset]
    mechanisms, panels = _remedy_panels([r for r in recs if r.get("stage") == "remedy"])
    healthy = [r for r in recs if r.get("stage") == "healthy"]
    n_cols = len(mechanisms) + (1 if healthy else 0)
    # Without a healthy column the legend goes to the right, outside the panels.
    legend_width = 0.0 if healthy else 2.6
    fig = Figure(figsize=(max(6.0, 3.3 * n_cols + 0.8) + legend_width, 7.6), layout="constrained")
    if n_cols == 0:
        empty_panel(fig.subplots(), f"no remedy or healthy runs for {dataset}")
        fig.suptitle(f"KL vs decoder sensitivity per latent dimension - {dataset}")
        save_figure(fig, path)
        return
    axes = fig.subplots(2, n_cols, sharex=True, sharey=True, squeeze=False)
    chosen_runs = [r for r, _ in panels if r is not None]
    if healthy:
        chosen_runs.append(_first_seed(healthy))
    sens_all = np.concatenate(
        [_floats(r.get("sensitivity_per_dim")) for r in chosen_runs] + [np.zeros(0)]
    )
    positive = sens_all[np.isfinite(sens_all) & (sens_all > 0)]
    floor = float(positive.min() / 10) if positive.size else 1e-6
    for j in range(len(mechanisms)):
        for i in range(2):
            record, title = panels[2 * j + i]
            _kl_sens_panel(axes[i, j], record, floor, title)
    legend_ax = axes[0, 0] if not healthy else axes[1, -1]
    if healthy:
        run = _first_seed(healthy)
        _kl_sens_panel(axes[0, -1], run, floor, f"healthy reference ({run.get('point')})")
        legend_ax.set_axis_off()
    _kl_sens_axes(axes, legend_ax if healthy else None, floor, positive)
    handles = [
        Line2D([], [], color=_HEALTHY_COLOUR, marker="o", ls="", label="latent dimension"),
        Line2D([], [], color="0.45", marker="v", ls="", label="sensitivity ~0 (axis floor)"),
        Line2D([], [], color="white", label="number: dimension index"),
    ]
    if healthy:
        legend_ax.legend(handles=handles, loc="center", frameon=False)
    else:
        # On the right: below, it would collide with the figure's x label.
        fig.legend(handles=handles, loc="outside right center", frameon=False)
    fig.supxlabel("KL(q(z_d|x) || p(z_d)) per dimension (nats, mean over cells)", fontsize=10)
    fig.supylabel("decoder sensitivity  mean ||d log mu / dz_d||^2", fontsize=10)
    fig.suptitle(
        f"KL vs decoder sensitivity per latent dimension - {dataset} "
        "(one run each: its smallest seed)"
    )
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# MI + KL(q(z) || p(z)) = E[KL]
# --------------------------------------------------------------------------------------


def _mi_identity_runs(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Means over seeds of MI and KLs per remedy run, then the healthy reference.

    Remedies are grouped by mechanism (in first-seen order) and listed in their order.
    """
    data = df[(df["dataset"] == dataset) & df["stage"].isin(["remedy", "healthy"])].copy()
    data["_stage"] = (data["stage"] == "healthy").astype(int)
    mech_rank = {m: i for i, m in enumerate(_names(data["mechanism"]))}
    data["_mech"] = data["mechanism"].map(mech_rank).fillna(len(mech_rank))
    keys = ["_stage", "_mech", "order", "stage", "mechanism", "point", "remedy"]
    columns = ["mi", "kl_aggregate", "kl_total", "mi_cap"]
    return (
        data.groupby(keys, sort=True, dropna=False)[columns].mean().reset_index()
        if not data.empty
        else pd.DataFrame(columns=keys + columns)
    )


def _mi_identity_bars(ax: Axes, runs: pd.DataFrame) -> None:
    """Stacked bars of MI and marginal KL, the measured expected KL and the numbers."""
    n = len(runs)
    labels = [
        f"healthy: {r.point}" if r.stage == "healthy" else f"{r.mechanism}: {r.remedy}"
        for r in runs.itertuples()
    ]
    y = np.arange(n)
    mi = runs["mi"].to_numpy(dtype=float)
    kla = runs["kl_aggregate"].to_numpy(dtype=float)
    total = runs["kl_total"].to_numpy(dtype=float)
    mi_bar = np.clip(np.nan_to_num(mi), 0, None)
    kla_bar = np.clip(np.nan_to_num(kla), 0, None)
    ax.barh(y, mi_bar, height=0.7, color="tab:blue")
    ax.barh(y, kla_bar, height=0.7, left=mi_bar, color="tab:orange")
    ax.scatter(total, y, marker="|", s=260, color="black", lw=2, zorder=3)
    end = np.fmax(mi_bar + kla_bar, np.nan_to_num(total))
    for yi, e, m, k, t in zip(y, end, mi, kla, total, strict=True):
        ax.text(
            e,
            yi,
            f"  {m:.2f} {'-' if k < 0 else '+'} {abs(k):.2f} = {m + k:.2f}  (measured {t:.2f})",
            va="center",
            fontsize=7.5,
            color="0.2",
        )
    # Faint lines between mechanisms, so that each group of remedies reads as one.
    groups = runs["_stage"].astype(str) + "/" + runs["mechanism"].astype(str)
    for i in range(1, n):
        if groups.iloc[i] != groups.iloc[i - 1]:
            ax.axhline(i - 0.5, color="0.75", lw=0.8)
    cap = float(np.nanmean(runs["mi_cap"].to_numpy(dtype=float)))
    if np.isfinite(cap):
        ax.axvline(cap, color="0.3", ls=":", lw=1.3)
    right = float(np.nanmax(np.append(end, cap if np.isfinite(cap) else 0.0)))
    # The written numbers need about 40 % of the axis beyond the longest bar.
    ax.set_xlim(0, max(right, 1e-3) * 1.6)
    ax.set_yticks(y, labels)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)


def plot_mi_identity(df: pd.DataFrame, dataset: str, path: str | os.PathLike) -> None:
    """Split of the expected KL into mutual information and marginal KL, per run.

    For every remedy run and the healthy reference of one dataset (means over seeds),
    a horizontal bar of I(x; z) with KL(q(z) || p(z)) stacked on it; their sum is
    E_x KL(q(z|x) || p(z)), whose measured value is a black tick (the two agree up to
    estimation error). The numbers are written beside each bar; a dotted line marks
    log N, the largest MI the estimator can report. Negative estimates of the marginal
    KL are drawn as zero-length bars (the written numbers keep their sign).

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.atlas.tables.collect`.
    dataset
        Dataset to draw.
    path
        PNG to write.
    """
    runs = _mi_identity_runs(df, dataset)
    fig = Figure(figsize=(10.0, 0.36 * len(runs) + 2.4), layout="constrained")
    ax = fig.subplots()
    if len(runs) == 0:
        empty_panel(ax, f"no remedy or healthy runs for {dataset}")
    else:
        _mi_identity_bars(ax, runs)
    ax.set_xlabel("nats (mean over seeds)")
    ax.set_title(
        f"{dataset}: E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)), per run", fontsize=11
    )
    handles = [
        Patch(color="tab:blue", label="I(x; z)"),
        Patch(color="tab:orange", label="KL(q(z) || p(z))"),
        Line2D([], [], color="black", marker="|", ms=12, mew=2, ls="", label="E_x KL (measured)"),
        Line2D([], [], color="0.3", ls=":", lw=1.3, label="log N (largest MI)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# vicious cycle
# --------------------------------------------------------------------------------------


def _vicious_cycle_column(axes: Sequence[Axes], recs: Sequence[Mapping], colours: Mapping) -> None:
    """One dataset: log theta (top) and the training KL (bottom) against the epoch."""
    ax_theta, ax_kl = axes
    any_theta = False
    for r in sorted(recs, key=lambda r: (int(r.get("order", 0)), int(r.get("seed", 0)))):
        hist = r.get("history") or {}
        kl = _floats(hist.get("train_kl"))
        epoch = _floats(hist.get("epoch")) if hist.get("epoch") else np.arange(kl.size) + 1.0
        theta = _floats(hist.get("theta_median"))
        c = colours[str(r.get("point"))]
        if kl.size == epoch.size:
            ax_kl.plot(epoch, kl, color=c, lw=1.4)
        if theta.size == epoch.size and (np.isfinite(theta) & (theta > 0)).any():
            with np.errstate(divide="ignore", invalid="ignore"):
                log_theta = np.where(theta > 0, np.log10(theta), np.nan)
            ax_theta.plot(epoch, log_theta, color=c, lw=1.4)
            any_theta = True
    if not any_theta:
        _note(ax_theta, "no dispersion theta recorded\n(Poisson likelihood?)")
        # y is not shared, so clearing its ticks leaves the other columns alone.
        ax_theta.set_yticks([])
    ax_kl.set_xlabel("epoch")
    ax_kl.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_theta.tick_params(labelbottom=True)
    for ax in (ax_theta, ax_kl):
        ax.grid(alpha=0.3)


def plot_vicious_cycle(
    records: Sequence[Mapping], path: str | os.PathLike, *, mechanism: str = "vicious_cycle"
) -> None:
    """Dispersion and KL during training along a sweep, one column per dataset.

    Top row: log10 of the median inverse dispersion theta of the decoder against the
    epoch (small theta: a noisy decoder that explains counts without z); bottom row:
    the training KL. One colour per sweep point (light to dark in sweep order), one
    line per seed. Runs without a dispersion (Poisson likelihood, or theta missing in
    the history) leave the top panel empty with a note.

    Parameters
    ----------
    records
        Run records of :func:`scvae.atlas.jobs.run_atlas_job`; the ``sweep`` runs of
        ``mechanism`` are drawn.
    path
        PNG to write.
    mechanism
        Mechanism whose sweep is drawn (any mechanism with a ``history`` works).
    """
    recs = [r for r in records if r.get("stage") == "sweep" and r.get("mechanism") == mechanism]
    datasets = sorted(_names(r.get("dataset") for r in recs))
    points = _ordered(
        pd.DataFrame(
            {"point": [str(r.get("point")) for r in recs], "order": [r.get("order") for r in recs]}
        ),
        "point",
    )
    shades = mpl.colormaps["viridis"](np.linspace(0.85, 0.05, max(len(points), 1)))
    colours = dict(zip(points, shades, strict=False))
    n_cols = max(len(datasets), 1)
    fig = Figure(figsize=(max(6.0, 4.3 * n_cols), 7.4), layout="constrained")
    axes = fig.subplots(2, n_cols, sharex="col", squeeze=False)
    if not recs:
        for ax in axes.flat:
            empty_panel(ax, f"no sweep runs of {mechanism}")
    for j, dataset in enumerate(datasets):
        _vicious_cycle_column(axes[:, j], [r for r in recs if r.get("dataset") == dataset], colours)
        axes[0, j].set_title(f"{dataset}: decoder dispersion", fontsize=10)
        axes[1, j].set_title(f"{dataset}: KL term", fontsize=10)
    axes[0, 0].set_ylabel("log10 median inverse dispersion theta\n(small: noisy decoder)")
    axes[1, 0].set_ylabel("training KL (nats per cell)")
    fig.suptitle(f"Vicious cycle ({mechanism} sweep): decoder dispersion and KL during training")
    if points:
        handles = [Line2D([], [], color=colours[p], lw=2.5, label=p) for p in points]
        fig.legend(
            handles=handles,
            title=f"{mechanism} sweep point",
            loc="outside lower center",
            ncols=min(len(points), 6),
            frameon=False,
        )
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# ARI on the means vs on a posterior draw
# --------------------------------------------------------------------------------------


def _means_vs_sample_points(
    ax: Axes, data: pd.DataFrame, x: np.ndarray, y: np.ndarray, markers: Mapping[str, str]
) -> None:
    """Every run as a point (colour: collapsed or not; marker: dataset), the diagonal."""
    datasets = list(markers)
    collapsed = _collapsed(data)
    names = data["dataset"].astype(str).to_numpy()
    for dataset in datasets:
        for flag, colour in ((False, _HEALTHY_COLOUR), (True, _COLLAPSED_COLOUR)):
            sel = (names == dataset) & (collapsed == flag)
            ax.scatter(
                x[sel],
                y[sel],
                marker=markers[dataset],
                color=colour,
                s=36,
                alpha=0.75,
                edgecolor="white",
                lw=0.5,
                zorder=3,
            )
    lo = min(0.0, float(np.min(np.concatenate([x, y])))) - 0.03
    hi = max(1.0, float(np.max(np.concatenate([x, y])))) + 0.03
    ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=1.1, zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=_HEALTHY_COLOUR, marker="o", ls="", label="not collapsed"),
        Line2D(
            [],
            [],
            color=_COLLAPSED_COLOUR,
            marker="o",
            ls="",
            label="collapsed (verdict)",
        ),
        Line2D([], [], color="0.4", ls="--", label="y = x"),
    ]
    handles += [Line2D([], [], color="0.3", marker=markers[d], ls="", label=d) for d in datasets]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def plot_means_vs_sample(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """KMeans ARI on the posterior means against ARI on one posterior draw, every run.

    Each run and seed is a point: red when collapsed (its verdict, see
    :func:`scvae.diagnostics.verdicts.is_collapsed`), blue otherwise, one marker per
    dataset. Points below the diagonal are runs whose posterior means show more
    cell-type structure than the code carries once its own posterior noise is added.

    Parameters
    ----------
    df
        Per-run table from :func:`scvae.atlas.tables.collect` (all stages).
    path
        PNG to write.
    """
    x_all = df["kmeans_ari"].to_numpy(dtype=float)
    y_all = df["kmeans_ari_sample"].to_numpy(dtype=float)
    ok = np.isfinite(x_all) & np.isfinite(y_all)
    data = df[ok]
    datasets = _datasets(data)
    markers = {d: _DATASET_MARKERS[i % len(_DATASET_MARKERS)] for i, d in enumerate(datasets)}
    fig = Figure(figsize=(8.6, 6.4), layout="constrained")
    ax = fig.subplots()
    if data.empty:
        empty_panel(ax, "no runs with both ARIs")
    else:
        _means_vs_sample_points(ax, data, x_all[ok], y_all[ok], markers)
    ax.set_xlabel("KMeans ARI on the posterior means")
    ax.set_ylabel("KMeans ARI on one posterior draw per cell")
    ax.set_title(
        f"Clustering of means vs posterior draws, every atlas run ({len(data)} trainings)"
        "\nbelow the diagonal: the means overstate the structure of the code",
        fontsize=10,
    )
    save_figure(fig, path)


# --------------------------------------------------------------------------------------
# all figures
# --------------------------------------------------------------------------------------


def write_atlas_figures(records: Sequence[Mapping], out_dir: str | os.PathLike) -> list[Path]:
    """Draw every atlas figure whose data are present.

    Per mechanism ``sweep_<mechanism>.png`` (:func:`plot_sweeps`, when it has sweep
    runs) and ``remedies_<mechanism>.png`` (:func:`plot_remedies`, when it has remedy
    runs); per dataset ``kl_sensitivity_<dataset>.png`` (:func:`plot_kl_vs_sensitivity`)
    and ``mi_identity_<dataset>.png`` (:func:`plot_mi_identity`), when it has remedy or
    healthy runs; ``vicious_cycle.png`` (:func:`plot_vicious_cycle`) when the
    ``vicious_cycle`` mechanism was swept; ``ari_means_vs_sample.png``
    (:func:`plot_means_vs_sample`) when some run has both ARIs.

    Parameters
    ----------
    records
        Run records of :func:`scvae.atlas.jobs.run_atlas_job`.
    out_dir
        Folder for the PNGs (created if needed).

    Returns
    -------
    list of Path
        The files written, in the order above.
    """
    if not records:
        logger.warning("no atlas records: no figures")
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = collect(list(records))
    written: list[Path] = []

    def target(name: str) -> Path:
        written.append(out / name)
        return written[-1]

    for mech in _names(df["mechanism"]):
        if ((df["stage"] == "sweep") & (df["mechanism"] == mech)).any():
            plot_sweeps(df, mech, target(f"sweep_{_slug(mech)}.png"))
        if ((df["stage"] == "remedy") & (df["mechanism"] == mech)).any():
            plot_remedies(df, mech, target(f"remedies_{_slug(mech)}.png"))
    for dataset in _datasets(df):
        if (df["stage"].isin(["remedy", "healthy"]) & (df["dataset"] == dataset)).any():
            plot_kl_vs_sensitivity(records, dataset, target(f"kl_sensitivity_{_slug(dataset)}.png"))
            plot_mi_identity(df, dataset, target(f"mi_identity_{_slug(dataset)}.png"))
    if any(r.get("stage") == "sweep" and r.get("mechanism") == "vicious_cycle" for r in records):
        plot_vicious_cycle(records, target("vicious_cycle.png"))
    if (df["kmeans_ari"].notna() & df["kmeans_ari_sample"].notna()).any():
        plot_means_vs_sample(df, target("ari_means_vs_sample.png"))
    return written
