"""Figures of the collapse diagnostics: KL per dimension, decoder sensitivity, J^T J spectrum.

Every figure function takes the dictionary of :func:`scvae.diagnostics.suite.diagnose` (or
of :func:`scvae.diagnostics.suite.read_diagnostics`; JSON ``null`` values are drawn as
missing) or an AnnData holding it in ``uns["scvae"]["diagnostics"]`` (where the
``cluster`` stage puts it), returns the figure and, with ``save``, writes it as a PNG
atomically (:func:`scvae.plotting.style.save_figure`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from scvae.errors import InputError
from scvae.plotting.style import empty_panel, save_figure

__all__ = ["jtj_spectrum", "kl_per_dim", "plot_diagnostics", "sensitivity_vs_kl"]

Diagnostics = ad.AnnData | Mapping[str, Any]
"""What the figure functions draw: the diagnostics, or an AnnData that holds them."""

_VERDICT_COLORS = {"healthy": "tab:green", "partial collapse": "tab:orange", "collapsed": "tab:red"}
_DEFAULT_REL_SENSITIVITY = 1e-3


def _diagnostics(data: Diagnostics) -> Mapping[str, Any]:
    """The diagnostics dictionary of ``data``."""
    if not isinstance(data, ad.AnnData):
        return data
    diag = data.uns.get("scvae", {}).get("diagnostics")
    if not isinstance(diag, Mapping) or not diag:
        raise InputError(
            "no uns['scvae']['diagnostics'] in the AnnData (the cluster stage's final.h5ad "
            "holds it); pass the dictionary of scvae.diagnostics.diagnose(model, adata)"
        )
    return diag


def _values(diag: Mapping[str, Any], key: str) -> np.ndarray:
    # None (JSON null) becomes NaN; after an h5ad round trip the lists are arrays.
    value = diag.get(key)
    return np.asarray([] if value is None else value, dtype=np.float64)


def _active(diag: Mapping[str, Any], n_dims: int) -> np.ndarray:
    """The active-unit mask; every dimension when the diagnostics have none."""
    value = diag.get("active_mask")
    return np.asarray([True] * n_dims if value is None else value, dtype=bool)


def _scalar(diag: Mapping[str, Any], key: str) -> float:
    value = diag.get(key)
    return np.nan if value is None else float(value)


def _rel_sensitivity(diag: Mapping[str, Any]) -> float:
    thresholds = (diag.get("settings") or {}).get("thresholds") or {}
    return float(thresholds.get("rel_sensitivity", _DEFAULT_REL_SENSITIVITY))


def _title(fig: Figure, diag: Mapping[str, Any], what: str) -> None:
    label = str(diag.get("verdict", "?"))
    fig.suptitle(
        f"{what} - verdict: {label} ({diag.get('n_cells', '?')} cells)",
        fontsize=12,
        color=_VERDICT_COLORS.get(label, "black"),
    )


def _log_floor(*arrays: np.ndarray) -> float:
    """A value below every positive entry, where zeros are drawn on a log axis."""
    positive = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays])
    return float(positive.min() / 10) if positive.size else 1e-6


def kl_per_dim(data: Diagnostics, *, save: str | os.PathLike | None = None) -> Figure:
    """Bars of KL and mutual information per latent dimension, inactive units hatched.

    A dimension whose KL bar towers over its MI bar carries KL that is not information
    about the cell (the signature of free bits holding a collapsed dimension open).

    Parameters
    ----------
    data
        Diagnostics with ``kl_per_dim``, ``mi_per_dim`` and ``active_mask``, or an
        AnnData with them in ``uns["scvae"]["diagnostics"]``.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).
    """
    diag = _diagnostics(data)
    kl = _values(diag, "kl_per_dim")
    mi = _values(diag, "mi_per_dim")
    active = _active(diag, kl.size)
    fig = Figure(figsize=(max(6.5, 0.55 * kl.size + 3), 4.4), layout="constrained")
    ax = fig.subplots()
    if kl.size == 0:
        empty_panel(ax, "no KL per dimension")
    else:
        dims = np.arange(kl.size)
        width = 0.4
        hatches = ["" if a else "//" for a in active]
        series = ((-width / 2, kl, "tab:blue"), (width / 2, mi, "tab:orange"))
        for offset, values, color in series:
            if values.size != kl.size:
                continue
            bars = ax.bar(dims + offset, np.nan_to_num(values), width, color=color)
            for bar, hatch, a in zip(bars, hatches, active, strict=True):
                bar.set_hatch(hatch)
                bar.set_alpha(1.0 if a else 0.45)
        ax.set_xticks(dims, [f"z{d}" for d in dims])
        ax.set_xlim(-0.6, kl.size - 0.4)
        ax.grid(axis="y", alpha=0.3)
        # A collapsed code has KL ~1e-17: keep a readable axis instead of zooming on noise.
        top = np.nanmax(np.concatenate([kl, mi])) if np.isfinite(kl).any() else 0.0
        ax.set_ylim(0, max(1.08 * top, 0.05))
        handles = [
            Patch(color="tab:blue", label="KL(q(z_d|x) || p(z_d)), mean over cells"),
            Patch(color="tab:orange", label="I(x; z_d)"),
            Patch(facecolor="white", edgecolor="0.3", hatch="//", label="inactive unit"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        au = int(active.sum())
        mi_total, mi_cap = (_scalar(diag, k) for k in ("mi", "mi_cap"))
        # Rounding noise of an exactly collapsed code (-6e-16 nats) reads as zero.
        mi_total = 0.0 if abs(mi_total) < 1e-9 else mi_total
        ax.set_title(
            f"{au}/{kl.size} active units, total KL {np.nansum(kl):.3g} nats, "
            f"I(x; z) {mi_total:.3g} nats (cap {mi_cap:.3g})",
            fontsize=10,
        )
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("nats")
    _title(fig, diag, "KL and information per latent dimension")
    return _saved(fig, save)


def sensitivity_vs_kl(data: Diagnostics, *, save: str | os.PathLike | None = None) -> Figure:
    """Scatter of decoder sensitivity against KL per dimension, on log axes.

    Healthy dimensions sit on a rising diagonal: those with KL move the decoded
    expression. A dimension with KL but near-zero sensitivity is information the
    decoder ignores. Zeros are drawn at a floor below the smallest positive value.

    Parameters
    ----------
    data
        Diagnostics with ``kl_per_dim``, ``sensitivity_per_dim`` and ``active_mask``,
        or an AnnData with them in ``uns["scvae"]["diagnostics"]``.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).
    """
    diag = _diagnostics(data)
    kl = _values(diag, "kl_per_dim")
    sens = _values(diag, "sensitivity_per_dim")
    active = _active(diag, kl.size)
    fig = Figure(figsize=(6.8, 5.2), layout="constrained")
    ax = fig.subplots()
    if kl.size == 0 or sens.size != kl.size:
        empty_panel(ax, "no sensitivity per dimension")
    else:
        floor_x, floor_y = _log_floor(kl), _log_floor(sens)
        x = np.where(np.isfinite(kl) & (kl > floor_x), kl, floor_x)
        y = np.where(np.isfinite(sens) & (sens > floor_y), sens, floor_y)
        # Shape: where the value really is (v: sensitivity ~0, <: KL ~0); colour: active.
        y_low, x_low = y == floor_y, (x == floor_x) & (y != floor_y)
        shape = np.where(y_low, "v", np.where(x_low, "<", "o"))
        for marker in ("o", "v", "<"):
            for sel, color in ((active, "tab:blue"), (~active, "tab:red")):
                sel = sel & (shape == marker)
                ax.scatter(x[sel], y[sel], color=color, marker=marker, s=50, zorder=3)
        for d in range(kl.size):
            ax.annotate(
                f"z{d}", (x[d], y[d]), xytext=(4, 4), textcoords="offset points", fontsize=9
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        rel = _rel_sensitivity(diag)
        finite = sens[np.isfinite(sens)]
        if finite.size and finite.max() > 0:
            ax.axhline(rel * finite.max(), color="0.4", ls="--", lw=1.2)
        ax.grid(alpha=0.3, which="both")
        handles = [
            Line2D([], [], color="tab:blue", marker="o", ls="", label="active unit"),
            Line2D([], [], color="tab:red", marker="o", ls="", label="inactive unit"),
            Line2D([], [], color="0.4", ls="--", label=f"{rel:g} x largest sensitivity"),
        ]
        if y_low.any():
            handles.append(
                Line2D([], [], color="0.4", marker="v", ls="", label="sensitivity ~0 (axis floor)")
            )
        if x_low.any():
            handles.append(
                Line2D([], [], color="0.4", marker="<", ls="", label="KL ~0 (axis floor)")
            )
        ax.legend(handles=handles, loc="best", fontsize=9)
        rho = _scalar(diag, "kl_sensitivity_spearman")
        rho_text = f"{rho:.2f}" if np.isfinite(rho) else "undefined"
        ax.set_title(f"Spearman rank correlation of KL and sensitivity: {rho_text}", fontsize=10)
    ax.set_xlabel("KL per dimension (nats, mean over cells)")
    ax.set_ylabel("decoder sensitivity  mean ||d log mu / dz_d||^2")
    _title(fig, diag, "Decoder sensitivity vs KL")
    return _saved(fig, save)


def jtj_spectrum(data: Diagnostics, *, save: str | os.PathLike | None = None) -> Figure:
    """Eigenvalues of ``mean_i J_i^T J_i`` in decreasing order, on a log scale.

    The number of eigenvalues well above zero is the number of latent directions the
    decoder actually uses, whatever the rotation of the code.

    Parameters
    ----------
    data
        Diagnostics with ``jtj_eigenvalues`` (and ``sensitivity_per_dim``, drawn sorted
        for comparison), or an AnnData with them in ``uns["scvae"]["diagnostics"]``.
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).
    """
    diag = _diagnostics(data)
    eig = _values(diag, "jtj_eigenvalues")
    sens = np.sort(_values(diag, "sensitivity_per_dim"))[::-1]
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.subplots()
    if eig.size == 0:
        empty_panel(ax, "no Jacobian spectrum")
    else:
        floor = _log_floor(eig, sens)
        rank = np.arange(1, eig.size + 1)
        ax.plot(rank, np.maximum(eig, floor), "-", color="tab:purple")
        clipped = ~(eig > floor)
        ax.plot(rank[~clipped], eig[~clipped], "o", color="tab:purple", label="eigenvalue of J^T J")
        if clipped.any():
            ax.plot(
                rank[clipped],
                np.full(clipped.sum(), floor),
                "v",
                color="tab:purple",
                ms=9,
                zorder=4,
                label="zero eigenvalue (axis floor)",
            )
        if sens.size == eig.size:
            ax.plot(
                rank,
                np.maximum(sens, floor),
                "s:",
                color="0.5",
                ms=5,
                label="per-dimension sensitivity (diagonal, sorted)",
            )
        rel = _rel_sensitivity(diag)
        top = float(np.nanmax(eig)) if np.isfinite(eig).any() else 0.0
        if top > 0:
            ax.axhline(rel * top, color="0.4", ls="--", lw=1.2, label=f"{rel:g} x largest")
            n_used = int((eig >= rel * top).sum())
            ax.set_title(
                f"{n_used} of {eig.size} directions above {rel:g} x the largest eigenvalue",
                fontsize=10,
            )
        ax.set_yscale("log")
        ax.set_xticks(rank)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=9)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue (log scale)")
    _title(fig, diag, "Spectrum of the decoder's J^T J")
    return _saved(fig, save)


def _saved(fig: Figure, save: str | os.PathLike | None) -> Figure:
    if save is not None:
        save_figure(fig, save, tight=False)
    return fig


_PLOTS = {
    "kl_per_dim": kl_per_dim,
    "sensitivity_vs_kl": sensitivity_vs_kl,
    "jtj_spectrum": jtj_spectrum,
}


def plot_diagnostics(diag: Mapping[str, Any], paths: Mapping[str, str | os.PathLike]) -> None:
    """Write the diagnostic figures named in ``paths``.

    Parameters
    ----------
    diag
        The diagnostics dictionary.
    paths
        Destination by figure name: ``kl_per_dim``, ``sensitivity_vs_kl``,
        ``jtj_spectrum``.
    """
    unknown = sorted(set(paths) - set(_PLOTS))
    if unknown:
        raise ValueError(f"unknown figure name(s) {unknown}; expected some of {sorted(_PLOTS)}")
    for name, path in paths.items():
        _PLOTS[name](diag, save=path)
