"""The conventions every figure of the package shares: one DPI, atomic PNGs, colours.

Figures are :class:`matplotlib.figure.Figure` objects built directly (Agg canvas, no
pyplot), so they neither depend on nor change the global matplotlib backend or figure
registry, leave a notebook's inline backend alone, and are safe in worker processes
without a display. :func:`save_figure` writes them; the rest are small drawing helpers
that the figure modules (:mod:`scvae.plotting.qc`, :mod:`scvae.plotting.diagnostics`,
:mod:`scvae.plotting.comparison`, :mod:`scvae.atlas.figures`) have in common.
"""

from __future__ import annotations

import logging
import os

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scvae.utils.atomic import atomic_path

__all__ = ["DPI", "empty_panel", "offsets", "palette", "save_figure"]

logger = logging.getLogger(__name__)

#: Resolution of every PNG the package writes.
DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike, *, tight: bool = True) -> None:
    """Write ``fig`` as a PNG at :data:`DPI`, atomically.

    Parameters
    ----------
    fig
        The figure.
    path
        PNG to write (a temporary file renamed into place, so a reader never sees a
        partial one).
    tight
        Crop the canvas to what is drawn (``bbox_inches="tight"``), so that legends
        placed outside the axes are kept; False keeps the figure size as set.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight" if tight else None, format="png")
    logger.info("wrote %s", path)


def palette(n: int) -> list:
    """``n`` distinguishable colours: tab10, tab20, then evenly spaced turbo.

    Parameters
    ----------
    n
        Number of colours.

    Returns
    -------
    list
        RGBA tuples.
    """
    if n <= 10:
        return [mpl.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [mpl.colormaps["tab20"](i) for i in range(n)]
    return [mpl.colormaps["turbo"](x) for x in np.linspace(0.03, 0.97, n)]


def offsets(n: int, width: float = 0.3) -> np.ndarray:
    """Deterministic horizontal spread for ``n`` points around a category position.

    Parameters
    ----------
    n
        Number of points.
    width
        Distance between the outermost points.

    Returns
    -------
    numpy.ndarray
        ``n`` offsets, evenly spaced and centred on 0 (a single 0 for one point).
    """
    return np.zeros(1) if n == 1 else np.linspace(-width / 2, width / 2, n)


def empty_panel(
    ax: Axes, message: str, *, color: str | None = "0.4", fontsize: float | None = None
) -> None:
    """Write ``message`` in the middle of ``ax`` and clear its ticks.

    For a panel that has nothing to draw. Clearing the ticks of an axes with shared
    axes clears them on its siblings too.

    Parameters
    ----------
    ax
        The panel.
    message
        What is missing.
    color
        Text colour; None for matplotlib's default text colour.
    fontsize
        Text size; None for matplotlib's default.
    """
    size = {} if fontsize is None else {"fontsize": fontsize}
    ax.text(
        0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=color, **size
    )
    ax.set_xticks([])
    ax.set_yticks([])
