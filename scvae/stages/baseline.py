"""The ``baseline`` stage: a baseline embedding of a preprocessed h5ad, written like a run.

A baseline is written like a trained variant: an h5ad with the embedding in
``obsm["X_scvae"]``, so that the ``cluster`` stage (:mod:`scvae.stages.cluster`) and the
comparison treat it the same way.

Baseline h5ad contract (written by :func:`run_baseline`)
--------------------------------------------------------
- A run file (:func:`scvae.data.runfiles.write_run`) that extends the input h5ad: its
  ``obs`` and ``uns`` (without ``uns["scvae"]["train"]``, so that nothing is mistaken for
  a trained model's output) and the embedding; :func:`scvae.data.runfiles.read_run` attaches
  the counts and the rest of the input. Counts on disk (inputs of 1 GiB or more, see
  :func:`scvae.data.h5ad.read_h5ad`) stay there: the PCA reads them in chunks
  (:func:`pca_embedding`); scVI reads them all into memory.
- ``uns["scvae"]["baseline"]``: ``method`` (str), ``n_components`` (int, the embedding's
  dimension; absent only for an unavailable scVI asked for no particular size),
  ``seed`` (int), ``status`` (``"ok"`` or ``"unavailable"``) and:

  - PCA and Harmony: ``target_sum`` (float, of the normalization before the PCA);
  - Harmony: ``batch_keys`` (list of str: ``"batch"`` and the covariate columns, the
    variables Harmony corrects);
  - scVI: ``n_latent`` (int), ``gene_likelihood`` (str), ``max_epochs`` (int, the
    epochs run; when scvi-tools is missing, only when asked for), ``batch_key`` (str,
    only when the data have batches) and ``covariate_keys`` (list of str, only when
    there are covariates).

- Available (``status == "ok"``): ``obsm["X_scvae"]`` (cells x ``n_components``,
  float32) and ``uns["scvae"]["baseline"]["seconds"]`` (float, wall time of the
  embedding). There is never an ``obsm["X_scvae_scale"]``.
- Unavailable (scvi-tools or harmonypy missing): no ``obsm["X_scvae"]`` and
  ``uns["scvae"]["baseline"]["unavailable"]`` = the reason (str). The key's presence is
  the test; :func:`scvae.stages.cluster.run_cluster` passes such a file through and writes a
  metrics JSON with ``status: "unavailable"``.

The batch and covariates come from the preprocessing record:
``uns["scvae"]["preprocess"]["batch_key"]`` (the column, ``"batch"``, or absent/None
without batches) and ``uns["scvae"]["preprocess"]["covariate_keys"]``.
"""

from __future__ import annotations

import copy
import logging
import os
import time

import anndata as ad
import numpy as np
import pandas as pd

from scvae.baseline import (
    BaselineUnavailable,
    batch_columns,
    harmony_embedding,
    median_library_size,
    pca_embedding,
    scvi_embedding,
)
from scvae.data.h5ad import read_h5ad
from scvae.data.runfiles import write_run
from scvae.errors import InputError
from scvae.workflow_runs import BASELINE_METHODS, HARMONY_N_COMPONENTS, baseline_name

logger = logging.getLogger(__name__)


def _baseline_output(adata: ad.AnnData) -> ad.AnnData:
    """The input's cells, genes and ``uns``, without any earlier model output."""
    uns = copy.deepcopy(dict(adata.uns))
    uns.setdefault("scvae", {}).pop("train", None)
    return ad.AnnData(obs=adata.obs.copy(), var=pd.DataFrame(index=adata.var_names.copy()), uns=uns)


def _embed(
    adata: ad.AnnData,
    record: dict,
    *,
    n_components: int | None,
    max_epochs: int | None,
    target_sum: float | None,
    n_threads: int,
) -> np.ndarray:
    """The embedding of ``record["method"]``; adds the settings used to ``record``."""
    method, seed = record["method"], record["seed"]
    batch_key, covariates = batch_columns(adata)
    if method in ("pca", "harmony"):
        record["target_sum"] = median_library_size(adata) if target_sum is None else target_sum
    if method == "pca":
        if n_components is None:
            raise InputError("a pca baseline needs n_components")
        record["n_components"] = int(n_components)
        return pca_embedding(
            adata, n_components=n_components, target_sum=record["target_sum"], seed=seed
        )
    if method == "harmony":
        if batch_key is None:
            raise InputError(
                "Harmony needs batches, and uns['scvae']['preprocess'] has no batch_key "
                "(set batch_key or samples for the dataset)"
            )
        record["n_components"] = int(n_components or HARMONY_N_COMPONENTS)
        record["batch_keys"] = [batch_key, *covariates]
        return harmony_embedding(
            adata,
            batch_keys=record["batch_keys"],
            n_components=record["n_components"],
            target_sum=record["target_sum"],
            seed=seed,
            n_threads=n_threads,
        )
    if max_epochs is not None:
        record["max_epochs"] = int(max_epochs)
    emb, settings = scvi_embedding(
        adata,
        batch_key=batch_key,
        covariate_keys=covariates,
        n_latent=n_components,
        max_epochs=max_epochs,
        seed=seed,
        n_threads=n_threads,
    )
    record.update(settings, n_components=settings["n_latent"])
    return emb


def run_baseline(
    input_h5ad: str | os.PathLike,
    output_h5ad: str | os.PathLike,
    *,
    method: str,
    n_components: int | None = None,
    seed: int = 0,
    max_epochs: int | None = None,
    target_sum: float | None = None,
    n_threads: int = 0,
) -> dict:
    """Compute a baseline embedding of an h5ad and write it like a trained variant.

    See the module docstring for the output contract. Harmony and scVI use the batch
    and covariates of ``uns["scvae"]["preprocess"]`` (:func:`batch_columns`). A
    baseline whose library is missing (scvi-tools, harmonypy) is not an error: the
    h5ad is written without an embedding and with
    ``uns["scvae"]["baseline"]["unavailable"]`` set to the reason, and a warning is
    logged.

    Parameters
    ----------
    input_h5ad
        Preprocessed h5ad with raw counts.
    output_h5ad
        Where to write the baseline h5ad.
    method
        ``"pca"``, ``"harmony"`` or ``"scvi"``.
    n_components
        Embedding dimension: PCA components (required for ``"pca"``), Harmony's PCA
        components (None:
        :data:`scvae.workflow_runs.HARMONY_N_COMPONENTS`) or scVI's ``n_latent`` (None:
        scvi-tools' default).
    seed
        Seed for the method.
    max_epochs
        scVI only: training epochs (``None``: scvi-tools' default).
    target_sum
        PCA and Harmony: counts per cell after normalization (``None``: the median
        library size, see :func:`pca_embedding`).
    n_threads
        Harmony and scVI: threads (0: the library's default).

    Returns
    -------
    dict
        The ``uns["scvae"]["baseline"]`` record written.

    Raises
    ------
    InputError
        For an unknown method, unusable input, or Harmony on data without batches; the
        message names the input file.
    """
    if method not in BASELINE_METHODS:
        raise InputError(f"unknown baseline method {method!r}; choose one of {BASELINE_METHODS}")
    # Large files: the counts stay on disk (the PCA reads them in chunks).
    adata = read_h5ad(input_h5ad, backed=None)
    out = _baseline_output(adata)
    record: dict = {"method": method, "seed": int(seed), "status": "ok"}
    if n_components is not None:
        record["n_components"] = int(n_components)
    name = (
        method
        if method == "pca" and n_components is None
        else baseline_name(method, n_components, max_epochs)
    )
    start = time.perf_counter()
    try:
        emb = _embed(
            adata,
            record,
            n_components=n_components,
            max_epochs=max_epochs,
            target_sum=target_sum,
            n_threads=n_threads,
        )
    except InputError as err:
        raise InputError(f"{input_h5ad}: {err}") from err
    except BaselineUnavailable as err:
        record["status"] = "unavailable"
        record["unavailable"] = str(err)
        logger.warning("%s baseline unavailable: %s", name, err)
    else:
        record["seconds"] = float(time.perf_counter() - start)
        out.obsm["X_scvae"] = emb
    out.uns["scvae"]["baseline"] = record

    write_run(out, output_h5ad, extends=input_h5ad, obsm=list(out.obsm))
    logger.info(
        "wrote %s: %s%s, uns['scvae']['baseline']",
        output_h5ad,
        name,
        " in obsm['X_scvae']" if "X_scvae" in out.obsm else " (unavailable, no embedding)",
    )
    return record
