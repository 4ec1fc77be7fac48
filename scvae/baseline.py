"""Baseline embeddings (PCA, scVI) that the VAE variants are compared against.

A baseline is written like a trained variant: an h5ad with the embedding in
``obsm["X_scvae"]``, so that :func:`scvae.cluster.run_cluster` and the comparison treat it
the same way. Baseline variants are named ``f"{method}{n_components}"`` (``pca10``,
``pca50``) or just ``"scvi"`` (default ``n_latent``); see :func:`baseline_variant` and
:func:`parse_baseline_variant`.

Baseline h5ad contract (written by :func:`run_baseline`)
--------------------------------------------------------
- Everything from the input h5ad (``X``, ``layers["counts"]``, ``obs``, ``var``, other
  ``uns`` sections), except ``obsm["X_scvae"]``, ``obsm["X_scvae_scale"]`` and
  ``uns["scvae"]["train"]``, which are dropped if present so that nothing is mistaken
  for a trained model's output.
- ``uns["scvae"]["baseline"]``: ``method`` (str), ``n_components`` (int), ``seed``
  (int), ``status`` (``"ok"`` or ``"unavailable"``) and, for PCA, ``target_sum``
  (float); for scVI, ``gene_likelihood`` (str) and ``max_epochs`` (int, only when
  given).
- Available (``status == "ok"``): ``obsm["X_scvae"]`` (cells x ``n_components``,
  float32) and ``uns["scvae"]["baseline"]["seconds"]`` (float, wall time of the
  embedding). There is never an ``obsm["X_scvae_scale"]``.
- Unavailable (scvi-tools missing): no ``obsm["X_scvae"]`` and
  ``uns["scvae"]["baseline"]["unavailable"]`` = the reason (str). The key's presence is
  the test; :func:`scvae.cluster.run_cluster` passes such a file through and writes a
  metrics JSON with ``status: "unavailable"``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from scvae.data.h5ad import read_h5ad, write_h5ad
from scvae.errors import InputError

__all__ = [
    "BASELINE_METHODS",
    "BaselineUnavailable",
    "baseline_variant",
    "parse_baseline_variant",
    "pca_embedding",
    "run_baseline",
    "scvi_embedding",
]

logger = logging.getLogger(__name__)

BASELINE_METHODS = ("pca", "scvi")


class BaselineUnavailable(ImportError):
    """A baseline cannot run here because an optional dependency is missing."""


def baseline_variant(method: str, n_components: int) -> str:
    """Name of a baseline variant, e.g. ``("pca", 10) -> "pca10"``.

    Parameters
    ----------
    method
        One of :data:`BASELINE_METHODS`.
    n_components
        Embedding dimension.

    Returns
    -------
    str
        The variant name.
    """
    return f"{method}{int(n_components)}"


def parse_baseline_variant(name: str) -> tuple[str, int | None] | None:
    """Inverse of :func:`baseline_variant`; ``None`` for a non-baseline name.

    Parameters
    ----------
    name
        A variant name such as ``"pca50"``, ``"scvi"`` or ``"beta_vae"``.

    Returns
    -------
    tuple of (str, int or None) or None
        ``(method, n_components)``; ``n_components`` is None when the name has no
        number (the pipeline's ``"scvi"`` uses the default ``n_latent``).
    """
    m = re.fullmatch(rf"({'|'.join(BASELINE_METHODS)})(\d*)", name)
    if m is None:
        return None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def _counts(adata: ad.AnnData) -> sp.csr_matrix | np.ndarray:
    """Raw counts: ``layers["counts"]`` when present, else ``X``."""
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if counts is None:
        raise InputError("no counts: adata has neither layers['counts'] nor X")
    minimum = counts.min() if sp.issparse(counts) else np.min(counts)
    if minimum < 0:
        raise InputError("counts contain negative values; baselines need raw counts")
    return counts


def median_library_size(adata: ad.AnnData) -> float:
    """Median total count per cell (``layers["counts"]``, else ``X``)."""
    return float(np.median(np.asarray(_counts(adata).sum(axis=1)).ravel()))


def parse_target_sum(value: str | float) -> float | None:
    """The ``target_sum`` of :func:`pca_embedding` from a config or command-line value.

    ``"median"`` gives ``None`` (the median library size); anything else must be a
    positive number of counts per cell.

    Raises
    ------
    ValueError
        For any other value.
    """
    if value == "median":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0:
        raise ValueError(f"expected 'median' or a positive number, got {value!r}")
    return number


def pca_embedding(
    adata: ad.AnnData,
    *,
    n_components: int,
    target_sum: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """PCA of log-normalized counts, the standard scanpy baseline.

    On a private copy of the counts (``layers["counts"]``, else ``X``):
    :func:`scanpy.pp.normalize_total` to ``target_sum`` (scanpy's default: the median
    library size, see :func:`median_library_size`), :func:`scanpy.pp.log1p`,
    :func:`scanpy.pp.pca` with ``n_comps=n_components`` on all genes (no HVG
    selection and no scaling: the inputs are already restricted to variable genes).
    ``adata`` is not modified; the caller decides where the result goes
    (:func:`run_baseline` puts it in ``obsm["X_scvae"]``).

    Parameters
    ----------
    adata
        Cells with raw counts.
    n_components
        Number of principal components.
    target_sum
        Library size after normalization; ``None``: the median library size. A fixed
        1e4 (the PBMC 3k tutorial's value) inflates shallow data: on worm neurons
        (median 35 counts per cell) it drops the KMeans ARI of PCA 10 from 0.54 to 0.35
        (one KMeans fit).
    seed
        ``random_state`` for PCA (only used by randomized solvers).

    Returns
    -------
    numpy.ndarray
        Cells x ``n_components``, float32.
    """
    counts = _counts(adata)
    if not 1 <= n_components < min(adata.shape):
        raise InputError(
            f"n_components must be in [1, {min(adata.shape) - 1}] for {adata.shape}, "
            f"got {n_components}; use fewer components (config 'baselines: pca') or more "
            "cells and genes"
        )
    work = ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.float32, copy=True),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    if target_sum is None:
        target_sum = median_library_size(adata)
    sc.pp.normalize_total(work, target_sum=target_sum)
    sc.pp.log1p(work)
    sc.pp.pca(work, n_comps=n_components, random_state=seed)
    return np.asarray(work.obsm["X_pca"], dtype=np.float32)


def scvi_embedding(
    adata: ad.AnnData,
    *,
    n_latent: int = 10,
    max_epochs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Embed cells with scVI latent means, the standard deep-generative baseline.

    :class:`scvi.model.SCVI` with its defaults except ``gene_likelihood="nb"``
    (scVI's default is ``"zinb"``; NB matches the reference numbers and the VAE
    variants here), trained on the raw counts (``layers["counts"]``, else ``X``) with
    ``max_epochs`` (``None``: scVI's own rule, about ``min(400, 20000 * 400 /
    n_cells)``). Returns :meth:`~scvi.model.SCVI.get_latent_representation`
    (posterior means). Setting ``scvi.settings.seed`` seeds scvi-tools' global
    torch/numpy/random state, as scvi-tools always does.

    Parameters
    ----------
    adata
        Cells with raw counts; not modified.
    n_latent
        Latent dimension.
    max_epochs
        Training epochs; ``None`` for scVI's default.
    seed
        scvi-tools seed.

    Returns
    -------
    numpy.ndarray
        Cells x ``n_latent``, float32.

    Raises
    ------
    BaselineUnavailable
        When scvi-tools is not installed.
    """
    try:
        import scvi  # optional extra, imported only when this baseline runs
    except ImportError as err:
        raise BaselineUnavailable(
            f"scvi-tools is not installed ({err}); install the optional extra "
            "`pip install 'scvae[scvi]'` to run the scVI baseline"
        ) from err
    scvi.settings.seed = seed
    counts = _counts(adata)
    work = ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.float32, copy=True),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    scvi.model.SCVI.setup_anndata(work)
    model = scvi.model.SCVI(work, n_latent=n_latent, gene_likelihood="nb")
    model.train(max_epochs=max_epochs)
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def _baseline_output(adata: ad.AnnData) -> ad.AnnData:
    """Copy of the input without any earlier model output."""
    out = adata.copy()
    for k in ("X_scvae", "X_scvae_scale"):
        out.obsm.pop(k, None)
    out.uns.setdefault("scvae", {}).pop("train", None)
    return out


def run_baseline(
    input_h5ad: str | os.PathLike,
    output_h5ad: str | os.PathLike,
    *,
    method: str,
    n_components: int,
    seed: int = 0,
    max_epochs: int | None = None,
    target_sum: float | None = None,
) -> dict:
    """Compute a baseline embedding of an h5ad and write it like a trained variant.

    See the module docstring for the output contract. An unavailable scVI (no
    scvi-tools) is not an error: the h5ad is written without an embedding and with
    ``uns["scvae"]["baseline"]["unavailable"]`` set to the reason, and a warning is
    logged.

    Parameters
    ----------
    input_h5ad
        Preprocessed h5ad with raw counts.
    output_h5ad
        Where to write the baseline h5ad.
    method
        ``"pca"`` or ``"scvi"``.
    n_components
        Embedding dimension (PCA components or scVI ``n_latent``).
    seed
        Seed for the method.
    max_epochs
        scVI only: training epochs (``None``: scVI's default).
    target_sum
        PCA only: counts per cell after normalization (``None``: the median library
        size, see :func:`pca_embedding`).

    Returns
    -------
    dict
        The ``uns["scvae"]["baseline"]`` record written.
    """
    if method not in BASELINE_METHODS:
        raise InputError(f"unknown baseline method {method!r}; choose one of {BASELINE_METHODS}")
    adata = read_h5ad(input_h5ad)
    out = _baseline_output(adata)
    record: dict = {
        "method": method,
        "n_components": int(n_components),
        "seed": int(seed),
        "status": "ok",
    }
    start = time.perf_counter()
    try:
        if method == "pca":
            record["target_sum"] = (
                median_library_size(adata) if target_sum is None else float(target_sum)
            )
            emb = pca_embedding(
                adata, n_components=n_components, target_sum=record["target_sum"], seed=seed
            )
        else:
            record["gene_likelihood"] = "nb"
            if max_epochs is not None:
                record["max_epochs"] = int(max_epochs)
            emb = scvi_embedding(adata, n_latent=n_components, max_epochs=max_epochs, seed=seed)
    except InputError as err:
        raise InputError(f"{input_h5ad}: {err}") from err
    except BaselineUnavailable as err:
        record["status"] = "unavailable"
        record["unavailable"] = str(err)
        logger.warning("%s baseline unavailable: %s", baseline_variant(method, n_components), err)
    else:
        record["seconds"] = float(time.perf_counter() - start)
        out.obsm["X_scvae"] = emb
    out.uns["scvae"]["baseline"] = record

    write_h5ad(out, output_h5ad)
    logger.info(
        "wrote %s: %s%s, uns['scvae']['baseline']",
        output_h5ad,
        baseline_variant(method, n_components),
        " in obsm['X_scvae']" if "X_scvae" in out.obsm else " (unavailable, no embedding)",
    )
    return record
