"""The ``train`` stage: a preprocessed h5ad in; model, history and latent out."""

from __future__ import annotations

import logging
import os

import pandas as pd

from scvae.data.covariates import recorded_covariates
from scvae.data.h5ad import read_h5ad
from scvae.data.loaders import counts_source
from scvae.data.runfiles import write_run
from scvae.model import SCVAE, train
from scvae.utils.atomic import atomic_path, remove_stale_temps
from scvae.utils.provenance import versions

log = logging.getLogger(__name__)


def run_train(
    input_h5ad: str | os.PathLike,
    model_out: str | os.PathLike,
    history_out: str | os.PathLike,
    latent_out: str | os.PathLike,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    settings: dict | None = None,
) -> SCVAE:
    """Train on a preprocessed h5ad and write the model, the history and the latent AnnData.

    The batch and the covariates are those the preprocessing stage recorded
    (``uns["scvae"]["preprocess"]["batch_key"]`` and ``["covariate_keys"]``); the model is
    conditioned on them unless ``condition_on_batch`` is false.

    The latent AnnData is a run file (:func:`scvae.data.runfiles.write_run`: the counts stay
    in ``input_h5ad``, :func:`scvae.data.runfiles.read_run` attaches them) with the input's
    ``obs`` and ``uns`` plus ``obsm["X_scvae"]`` (posterior means),
    ``obsm["X_scvae_scale"]`` (posterior standard deviations), ``obs["scvae_split"]``
    (train / validation) and ``uns["scvae"]["train"]`` (settings, summary, versions,
    ``batch_key`` when there is a batch, ``covariate_keys`` and the ``categories`` the
    model is conditioned on).

    Parameters
    ----------
    input_h5ad
        Preprocessed AnnData with counts in ``layers["counts"]``.
    model_out, history_out, latent_out
        Output paths (``model.pt``, ``history.tsv``, ``latent.h5ad``), each written atomically.
    checkpoint_dir
        Where training checkpoints live (resumed when present).
    settings
        Flat model and training settings.

    Returns
    -------
    SCVAE
        The fitted model.
    """
    settings = dict(settings or {})
    for out in (model_out, history_out, latent_out):
        # Left by a run of this job that was killed while writing.
        remove_stale_temps(out)
    # Large files stay on disk (scvae.data.ondisk.backed_min_bytes): memory bounded by batches.
    adata = read_h5ad(input_h5ad, backed=None)
    where = counts_source(adata)
    batch_key, covariate_keys = recorded_covariates(adata)
    # The settings are complete (scvae.config.resolve_variant): no preset under them.
    model = train(
        adata,
        preset=None,
        batch_key=batch_key,
        covariate_keys=covariate_keys,
        checkpoint_dir=checkpoint_dir,
        source=f"{input_h5ad} ({where})",
        **settings,
    )
    model.save(model_out)
    with atomic_path(history_out) as tmp:
        model.history.to_csv(tmp, sep="\t", index=False)
    loc, scale = model.get_latent(adata, return_scale=True)
    adata.obsm["X_scvae"] = loc
    adata.obsm["X_scvae_scale"] = scale
    adata.obs["scvae_split"] = pd.Categorical(model.split, categories=["train", "validation"])
    record = {
        "model": model.module.config.to_dict(),
        "training": model.train_config.to_dict(),
        "summary": model.summary,
        "versions": versions(),
        "covariate_keys": list(model.covariate_keys),
        "categories": model.categories,
    }
    if model.batch_key is not None:  # h5ad cannot store None
        record["batch_key"] = model.batch_key
    adata.uns.setdefault("scvae", {})["train"] = record
    write_run(adata, latent_out, extends=input_h5ad, obsm=["X_scvae", "X_scvae_scale"])
    log.info(
        "wrote %s, %s and %s (obsm['X_scvae'], obsm['X_scvae_scale'])",
        model_out,
        history_out,
        latent_out,
    )
    return model
