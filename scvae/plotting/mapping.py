"""The figure of the ``map`` stage: reference and query in one UMAP."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
from matplotlib.figure import Figure

from scvae.errors import InputError
from scvae.plotting.style import palette, save_figure

__all__ = ["joint_umap"]


def joint_umap(
    joint: ad.AnnData, *, title: str = "", save: str | os.PathLike | None = None
) -> Figure:
    """Joint UMAP: by source, by label (the query's transferred), by the query's uncertainty.

    Parameters
    ----------
    joint
        Output of :func:`scvae.mapping.joint_embedding` (``obsm["X_umap"]``,
        ``obs["source"]``, ``obs["label"]``, ``obs["scvae_label_uncertainty"]``).
    title
        Figure title (the query's name).
    save
        PNG to write (atomically); None: none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (a notebook shows it when it is a cell's result).

    Raises
    ------
    InputError
        When ``joint`` lacks ``obsm["X_umap"]``, ``obs["source"]`` or ``obs["label"]``.
    """
    missing = [f"obs[{k!r}]" for k in ("source", "label") if k not in joint.obs]
    missing += [] if "X_umap" in joint.obsm else ["obsm['X_umap']"]
    if missing:
        raise InputError(
            f"the joint embedding lacks {', '.join(missing)}; make it with "
            "scvae.mapping.joint_embedding(reference, query)"
        )
    xy = joint.obsm["X_umap"]
    source = joint.obs["source"].astype(str).to_numpy()
    labels = joint.obs["label"].astype(str).to_numpy()
    fig = Figure(figsize=(15, 4.8))
    axes = fig.subplots(1, 3)
    for name, colour in zip(("reference", "query"), ("#bbbbbb", "#d62728"), strict=True):
        sel = source == name
        axes[0].scatter(*xy[sel].T, s=3, c=colour, label=f"{name} ({sel.sum()})", rasterized=True)
    axes[0].legend(markerscale=4, fontsize=8)
    axes[0].set_title("reference and query")
    classes = sorted(set(labels))
    for cls, colour in zip(classes, palette(len(classes)), strict=True):
        sel = labels == cls
        axes[1].scatter(*xy[sel].T, s=3, color=colour, label=cls, rasterized=True)
    axes[1].legend(markerscale=4, fontsize=7, loc="best")
    axes[1].set_title("label (query: transferred)")
    axes[2].scatter(*xy[source == "reference"].T, s=3, c="#dddddd", rasterized=True)
    if "scvae_label_uncertainty" in joint.obs:
        unc = joint.obs["scvae_label_uncertainty"].to_numpy(dtype=float)
        sel = (source == "query") & np.isfinite(unc)
        points = axes[2].scatter(*xy[sel].T, s=3, c=unc[sel], cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(points, ax=axes[2], label="uncertainty")
    axes[2].set_title("query: label transfer uncertainty")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    if save is not None:
        save_figure(fig, save)
    return fig
