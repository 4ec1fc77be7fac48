"""The ``diagnose`` stage: a saved model and its run file in; diagnostics JSON and figures out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scvae.data.runfiles import read_run
from scvae.diagnostics.suite import FIGURE_NAMES, diagnose, write_diagnostics
from scvae.errors import InputError
from scvae.model import SCVAE
from scvae.plotting.diagnostics import plot_diagnostics
from scvae.training.loop import resolve_device

log = logging.getLogger(__name__)


def run_diagnose(
    model_pt: str | os.PathLike,
    latent_h5ad: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    figure_dir: str | os.PathLike | None = None,
    figure_paths: Mapping[str, str | os.PathLike] | None = None,
    device: str = "cpu",
    **opts: Any,
) -> dict[str, Any]:
    """Diagnose a saved model on an h5ad file and write the JSON and the figures.

    Parameters
    ----------
    model_pt
        Model written by :meth:`scvae.model.SCVAE.save`.
    latent_h5ad
        The run's ``latent.h5ad`` (opened with its counts by
        :func:`scvae.data.runfiles.read_run`) or any h5ad of cells with raw counts in
        ``layers["counts"]``, in the row order of training (the validation split is
        matched by position).
    out_json
        Destination of :func:`write_diagnostics`.
    figure_dir
        Folder for ``kl_per_dim.png``, ``sensitivity_vs_kl.png`` and
        ``jtj_spectrum.png``.
    figure_paths
        Explicit destinations by figure name (see :data:`FIGURE_NAMES`); they override
        ``figure_dir`` for the names they give.
    device
        Where the model and every measure run: ``cpu``, ``cuda``, ``cuda:<n>`` or
        ``auto`` (CUDA when available), as the training's ``device``.
    **opts
        Keywords of :func:`diagnose` (``k_iwae``, ``n_mi``, ``n_jacobian``,
        ``au_threshold``, ``thresholds``, ``seed``, ...).

    Returns
    -------
    dict
        The diagnostics.
    """
    unknown = sorted(set(figure_paths or {}) - set(FIGURE_NAMES))
    if unknown:
        raise InputError(f"unknown figure name(s) {unknown}; expected some of {FIGURE_NAMES}")
    model = SCVAE.load(model_pt, device=str(resolve_device(device)))
    # The counts stay in the preprocessed file (on disk when large); read_run attaches them.
    adata = read_run(latent_h5ad)
    diagnostics = diagnose(model, adata, **opts)
    write_diagnostics(diagnostics, out_json)
    paths: dict[str, Path] = {}
    if figure_dir is not None:
        paths.update({name: Path(figure_dir) / f"{name}.png" for name in FIGURE_NAMES})
    paths.update({k: Path(v) for k, v in (figure_paths or {}).items()})
    if paths:
        plot_diagnostics(diagnostics, paths)
    v = diagnostics
    log.info(
        "%s: %s (I(x;z) = %.3f nats, %d/%d active units)",
        model_pt,
        v["verdict"],
        v["mi"],
        v["active_units"],
        v["n_latent"],
    )
    if "batch_in_z" in v:
        b = v["batch_in_z"]
        log.info("batch kNN accuracy from z %.3f (chance %.3f)", b["accuracy"], b["chance"])
    return diagnostics
