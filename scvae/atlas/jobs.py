"""One atlas job: train its models, diagnose them and score their latent spaces.

Each run trains on a fixed random subset of ``n_cells`` cells
(:func:`scvae.atlas.grid.subsample`), computes the collapse diagnostics
(:func:`scvae.diagnostics.suite.diagnose`) and scores the latent space against the
cell-type labels on the posterior means and on one posterior draw per cell
(:func:`scvae.scores.posterior_sample_scores`). A job writes one record per run and
seed; :mod:`scvae.atlas.tables` gathers them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import anndata as ad

from scvae.atlas.grid import subsample
from scvae.data.h5ad import read_h5ad
from scvae.diagnostics.suite import diagnose
from scvae.errors import InputError
from scvae.model import train
from scvae.scores import label_scores, posterior_sample_scores
from scvae.utils.jsonio import write_json

__all__ = ["run_atlas_job"]

log = logging.getLogger(__name__)

#: Columns of the training history kept in a record (for the vicious-cycle figure).
HISTORY_COLUMNS = ("epoch", "kl_weight", "train_kl", "train_recon", "theta_median")


def run_atlas_job(
    input_h5ad: str | os.PathLike,
    output_json: str | os.PathLike,
    runs: list[Mapping],
    *,
    dataset: str,
    n_cells: int | None = 2000,
    label_key: str = "label",
    resolution: float = 1.0,
    n_neighbors: int = 15,
    kmeans_fits: int = 5,
    diagnostics: Mapping | None = None,
) -> list[dict]:
    """Train the atlas models of one job and write their records as a JSON list.

    Parameters
    ----------
    input_h5ad
        Preprocessed AnnData with counts in ``layers["counts"]`` and labels in ``obs``.
    output_json
        Where the records go (written atomically, once every run is done).
    runs
        Run specs from :func:`scvae.atlas.grid.atlas_jobs` (identifiers, ``settings``,
        ``seed``).
    dataset
        Dataset name stored in the records.
    n_cells
        Cells of the fixed random subset (the same for every run on this input).
    label_key, resolution, n_neighbors
        Labels column and Leiden settings.
    kmeans_fits
        KMeans fits averaged in the KMeans scores (:func:`scvae.scores.label_scores`).
    diagnostics
        Keyword arguments of :func:`scvae.diagnostics.suite.diagnose`.

    Returns
    -------
    list of dict
        The records.
    """
    adata = read_h5ad(input_h5ad)
    if label_key not in adata.obs:
        raise InputError(f"{input_h5ad}: the atlas needs cell-type labels in obs[{label_key!r}]")
    adata = adata[subsample(adata.n_obs, n_cells)].copy()
    records = []
    for spec in runs:
        spec = dict(spec)
        settings, seed = spec.pop("settings"), int(spec.pop("seed"))
        record = _run_one(
            adata,
            settings,
            seed,
            label_key=label_key,
            resolution=resolution,
            n_neighbors=n_neighbors,
            kmeans_fits=kmeans_fits,
            diagnostics=diagnostics,
            source=str(input_h5ad),
        )
        records.append({"dataset": dataset, **spec, "seed": seed, "settings": settings, **record})
        log.info(
            "%s %s seed %d: MI %.3f, AU %d, KMeans ARI %.3f (on a posterior draw %.3f)",
            dataset,
            spec.get("name"),
            seed,
            record["mi"],
            record["active_units"],
            record["kmeans_ari"],
            record["kmeans_ari_sample"],
        )
    write_json(records, output_json)
    return records


def _run_one(
    adata: ad.AnnData,
    settings: Mapping,
    seed: int,
    *,
    label_key: str,
    resolution: float,
    n_neighbors: int,
    kmeans_fits: int,
    diagnostics: Mapping | None,
    source: str,
) -> dict:
    """Train, diagnose and score one model on ``adata``: the run's record."""
    started = time.perf_counter()
    model = train(adata, preset=None, progress=False, source=source, **{**settings, "seed": seed})
    seconds = time.perf_counter() - started
    diag = diagnose(model, adata, seed=seed, **(diagnostics or {}))
    loc, scale = model.get_latent(adata, return_scale=True)
    labels = adata.obs[label_key].astype(str).to_numpy()
    scoring = {"resolution": resolution, "n_neighbors": n_neighbors, "kmeans_fits": kmeans_fits}
    means = label_scores(loc, labels, seed=seed, **scoring)
    sample = posterior_sample_scores(loc, scale, labels, seed=seed, **scoring)
    history = model.history
    return {
        "n_cells": int(adata.n_obs),
        "epochs": int(model.summary["epochs"]),
        "train_seconds": seconds,
        **_diagnostic_fields(diag),
        **means,
        **sample,
        "history": {col: history[col].tolist() for col in HISTORY_COLUMNS if col in history},
    }


def _diagnostic_fields(diag: Mapping) -> dict:
    """The diagnostics a record keeps, from :func:`scvae.diagnostics.suite.diagnose`."""
    return {
        "verdict": diag["verdict"],
        "mi": diag["mi"],
        "mi_cap": diag["mi_cap"],
        "kl_total": diag["kl_total"],
        "kl_aggregate": diag["kl_aggregate"],
        "active_units": diag["active_units"],
        "n_latent": diag["n_latent"],
        "elbo": diag["elbo"],
        "recon": diag["recon"],
        "theta_median": diag["dispersion"].get("theta_q50"),
        "kl_per_dim": diag["kl_per_dim"],
        "mi_per_dim": diag["mi_per_dim"],
        "sensitivity_per_dim": diag["sensitivity_per_dim"],
    }
