"""The ``baseline`` stage: embeddings (PCA, Harmony, scVI) the VAE variants are compared with.

A baseline is written like a trained variant: an h5ad with the embedding in
``obsm["X_scvae"]``, so that :func:`scvae.cluster.run_cluster` and the comparison treat it
the same way. Run names (``pca<N>``, ``harmony``, ``scvi``, ``scvi_e<N>``) and which
runs a dataset gets are in :mod:`scvae.baseline_names`.

Baseline h5ad contract (written by :func:`run_baseline`)
--------------------------------------------------------
- A run file (:func:`scvae.data.runs.write_run`) that extends the input h5ad: its
  ``obs`` and ``uns`` (without ``uns["scvae"]["train"]``, so that nothing is mistaken for
  a trained model's output) and the embedding; :func:`scvae.data.runs.read_run` attaches
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
  the test; :func:`scvae.cluster.run_cluster` passes such a file through and writes a
  metrics JSON with ``status: "unavailable"``.

The batch and covariates come from the preprocessing record:
``uns["scvae"]["preprocess"]["batch_key"]`` (the column, ``"batch"``, or absent/None
without batches) and ``uns["scvae"]["preprocess"]["covariate_keys"]``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from scvae.baseline_names import BASELINE_METHODS, HARMONY_N_COMPONENTS, baseline_name
from scvae.data.h5ad import read_h5ad
from scvae.data.loaders import counts_matrix
from scvae.data.ondisk import H5CSR, is_ondisk, row_chunks, row_sums, take_rows
from scvae.data.runs import write_run
from scvae.errors import InputError

__all__ = [
    "BaselineUnavailable",
    "batch_columns",
    "harmony_embedding",
    "median_library_size",
    "parse_target_sum",
    "pca_embedding",
    "run_baseline",
    "scvi_embedding",
]

logger = logging.getLogger(__name__)


class BaselineUnavailable(ImportError):
    """A baseline cannot run here because an optional dependency is missing."""


def _counts(adata: ad.AnnData) -> sp.csr_matrix | H5CSR:
    """Raw counts: ``layers["counts"]`` when present, else ``X``; on disk when backed.

    Counts on disk are checked chunk by chunk where they are read
    (:func:`_log_normalized_chunks`).
    """
    if "counts" not in adata.layers and adata.X is None:
        raise InputError("no counts: adata has neither layers['counts'] nor X")
    counts = counts_matrix(adata)
    if not is_ondisk(counts) and counts.nnz and counts.data.min() < 0:
        raise InputError("counts contain negative values; baselines need raw counts")
    return counts


def _in_memory(counts: sp.csr_matrix | H5CSR) -> sp.csr_matrix:
    """The whole matrix in memory (read from disk when it is there)."""
    return take_rows(counts, np.arange(counts.shape[0])) if is_ondisk(counts) else counts


def median_library_size(adata: ad.AnnData) -> float:
    """Median total count per cell (``layers["counts"]``, else ``X``; chunked on disk)."""
    return float(np.median(row_sums(_counts(adata))))


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
    if target_sum is None:
        target_sum = median_library_size(adata)
    if is_ondisk(counts):
        return _pca_on_disk(counts, n_components, target_sum)
    work = ad.AnnData(
        X=sp.csr_matrix(counts, dtype=np.float32, copy=True),
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    sc.pp.normalize_total(work, target_sum=target_sum)
    sc.pp.log1p(work)
    sc.pp.pca(work, n_comps=n_components, random_state=seed)
    return np.asarray(work.obsm["X_pca"], dtype=np.float32)


def _log_normalized_chunks(
    counts: H5CSR, target_sum: float
) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
    """Row chunks of ``log1p(counts / library size * target_sum)``, float64, read from disk."""
    for rows, block in row_chunks(counts):
        if block.nnz and block.data.min() < 0:
            raise InputError(
                f"counts contain negative values (rows {rows[0]}-{rows[-1]}); baselines "
                "need raw counts"
            )
        block = sp.csr_matrix(block, dtype=np.float64)
        sums = np.asarray(block.sum(axis=1)).ravel()
        # normalize_total leaves empty cells at zero.
        scale = np.divide(target_sum, sums, out=np.zeros_like(sums), where=sums > 0)
        block = sp.diags(scale) @ block
        np.log1p(block.data, out=block.data)
        yield rows, block.tocsr()


def _pca_on_disk(counts: H5CSR, n_components: int, target_sum: float) -> np.ndarray:
    """PCA of log-normalized counts on disk, in two passes with one chunk in memory.

    The exact PCA (what ``sc.pp.pca(svd_solver="covariance_eigh")`` computes in memory):
    pass 1 sums the chunks' genes and gene x gene products (float64), the eigenvectors
    of the covariance are the components; pass 2 projects each chunk on them, centred.
    Memory: one chunk, a genes x genes matrix and the result.
    """
    n_cells, n_genes = counts.shape
    total = np.zeros(n_genes)
    gram = np.zeros((n_genes, n_genes))
    for _, block in _log_normalized_chunks(counts, target_sum):
        total += np.asarray(block.sum(axis=0)).ravel()
        gram += (block.T @ block).toarray()
    mean = total / n_cells
    cov = gram / n_cells - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)
    components = vectors[:, ::-1][:, :n_components]
    # scanpy's sign convention (svd_flip on the components): largest |loading| positive.
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(n_components)])
    components *= signs
    out = np.empty((n_cells, n_components), dtype=np.float32)
    shift = mean @ components
    for rows, block in _log_normalized_chunks(counts, target_sum):
        out[rows] = block @ components - shift
    logger.info(
        "PCA on disk: %d cells x %d genes in chunks, %d components (%.1f%% of the variance)",
        n_cells,
        n_genes,
        n_components,
        100 * values[::-1][:n_components].sum() / max(values.sum(), 1e-300),
    )
    return out


def batch_columns(adata: ad.AnnData) -> tuple[str | None, list[str]]:
    """The batch column and the covariate columns that preprocessing recorded.

    Parameters
    ----------
    adata
        A preprocessed h5ad's data: ``uns["scvae"]["preprocess"]`` holds ``batch_key``
        (absent or None without batches) and ``covariate_keys``.

    Returns
    -------
    tuple of (str or None, list of str)
        The batch column (None without batches) and the covariate columns.

    Raises
    ------
    InputError
        When a recorded column is not in ``adata.obs``.
    """
    record = adata.uns.get("scvae", {}).get("preprocess", {})
    batch_key = record.get("batch_key")
    # None, absent or "" (also NaN, as strict-JSON round trips write it): no batches.
    batch_key = batch_key if isinstance(batch_key, str) and batch_key else None
    covariates = [
        str(k) for k in np.atleast_1d(record.get("covariate_keys", [])) if isinstance(k, str) and k
    ]
    missing = [k for k in [batch_key, *covariates] if k is not None and k not in adata.obs]
    if missing:
        raise InputError(
            f"uns['scvae']['preprocess'] names obs columns {missing} that are not in obs "
            f"(columns: {list(adata.obs.columns)}); rerun the preprocessing"
        )
    return batch_key, covariates


def _categorical_obs(adata: ad.AnnData, keys: list[str]) -> pd.DataFrame:
    """``obs[keys]`` as string categoricals (a new frame on the same cell names)."""
    return pd.DataFrame(
        {k: pd.Categorical(adata.obs[k].astype(str)) for k in keys}, index=adata.obs_names.copy()
    )


def harmony_embedding(
    adata: ad.AnnData,
    *,
    batch_keys: list[str],
    n_components: int = HARMONY_N_COMPONENTS,
    target_sum: float | None = None,
    seed: int = 0,
    n_threads: int = 0,
) -> np.ndarray:
    """Harmony (Korsunsky et al. 2019) on the unintegrated PCA, the standard linear baseline.

    The PCA is :func:`pca_embedding` (the ``pca<N>`` baselines' normalization and PCA);
    :func:`harmonypy.run_harmony` then corrects it for the ``batch_keys`` columns of
    ``adata.obs`` with harmonypy's defaults (theta 2, ``min(cells / 30, 100)``
    clusters, at most 10 rounds), as scanpy's ``harmony_integrate`` does.

    Parameters
    ----------
    adata
        Cells with raw counts and the ``batch_keys`` columns; not modified.
    batch_keys
        obs columns Harmony corrects (the batch, then any covariates).
    n_components
        Principal components to correct.
    target_sum
        Library size after normalization; ``None``: the median (see
        :func:`pca_embedding`).
    seed
        Seed of the PCA and of Harmony's k-means initialization (``random_state``).
    n_threads
        Harmony's threads (0: one per physical core); the result does not depend on it.

    Returns
    -------
    numpy.ndarray
        Cells x ``n_components``, float32.

    Raises
    ------
    BaselineUnavailable
        When harmonypy is not installed.
    InputError
        When ``batch_keys`` is empty or names a missing column.
    """
    try:
        import harmonypy  # imported only when this baseline runs
    except ImportError as err:
        raise BaselineUnavailable(
            f"harmonypy is not installed ({err}); `pip install harmonypy` to run the "
            "Harmony baseline"
        ) from err
    if not batch_keys:
        raise InputError("Harmony needs a batch column; the data have no batches")
    missing = [k for k in batch_keys if k not in adata.obs]
    if missing:
        raise InputError(f"no obs column {missing} (columns: {list(adata.obs.columns)})")
    pcs = pca_embedding(adata, n_components=n_components, target_sum=target_sum, seed=seed)
    meta = _categorical_obs(adata, list(batch_keys))
    fit = harmonypy.run_harmony(
        pcs.astype(np.float64),
        meta,
        list(batch_keys),
        random_state=seed,
        verbose=False,
        ncores=n_threads,
    )
    z = np.asarray(fit.Z_corr)
    # harmonypy < 2 returned components x cells.
    if z.shape[0] != adata.n_obs:
        z = z.T
    return z.astype(np.float32)


def scvi_embedding(
    adata: ad.AnnData,
    *,
    batch_key: str | None = None,
    covariate_keys: list[str] | tuple[str, ...] = (),
    n_latent: int | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    n_threads: int = 0,
) -> tuple[np.ndarray, dict]:
    """Embed cells with scVI latent means, the standard deep-generative baseline.

    :class:`scvi.model.SCVI` with scvi-tools' own defaults (ZINB likelihood,
    ``n_latent`` 10, gene dispersion, one hidden layer of 128, 90% of the cells for
    training), trained on the raw counts (``layers["counts"]``, else ``X``) with
    ``max_epochs`` (``None``: scvi-tools' rule, ``min(400, 20000 * 400 / n_cells)``);
    the batch and covariates enter through ``setup_anndata(batch_key=...,
    categorical_covariate_keys=...)``. Returns
    :meth:`~scvi.model.SCVI.get_latent_representation` (posterior means). Setting
    ``scvi.settings.seed`` seeds scvi-tools' global torch/numpy/random state, as
    scvi-tools always does.

    Parameters
    ----------
    adata
        Cells with raw counts; not modified.
    batch_key
        obs column of the batch (None: no batch).
    covariate_keys
        obs columns of categorical covariates.
    n_latent
        Latent dimension (None: scvi-tools' default).
    max_epochs
        Training epochs (None: scvi-tools' default).
    seed
        scvi-tools seed.
    n_threads
        torch threads (0: torch's default).

    Returns
    -------
    tuple of (numpy.ndarray, dict)
        Cells x ``n_latent`` float32, and the settings used: ``n_latent``,
        ``gene_likelihood``, ``max_epochs`` (the epochs run), ``batch_key`` (when
        given) and ``covariate_keys`` (when any).

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
    if n_threads > 0:
        scvi.settings.num_threads = n_threads
    keys = [k for k in [batch_key, *covariate_keys] if k]
    work = ad.AnnData(
        # scvi-tools trains on counts in memory: here the whole matrix is read.
        X=sp.csr_matrix(_in_memory(_counts(adata)), dtype=np.float32, copy=True),
        obs=_categorical_obs(adata, keys),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    scvi.model.SCVI.setup_anndata(
        work, batch_key=batch_key, categorical_covariate_keys=list(covariate_keys) or None
    )
    model = scvi.model.SCVI(work, **({} if n_latent is None else {"n_latent": n_latent}))
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    settings: dict = {
        "n_latent": int(model.module.n_latent),
        "gene_likelihood": str(model.module.gene_likelihood),
        "max_epochs": len(model.history["elbo_train"]),
    }
    if batch_key:
        settings["batch_key"] = batch_key
    if covariate_keys:
        settings["covariate_keys"] = list(covariate_keys)
    return np.asarray(model.get_latent_representation(), dtype=np.float32), settings


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
        :data:`scvae.baseline_names.HARMONY_N_COMPONENTS`) or scVI's ``n_latent`` (None:
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
