"""Baseline embeddings (PCA, Harmony, scVI) the VAE variants are compared with.

Array-level functions (:func:`pca_embedding`, :func:`harmony_embedding`,
:func:`scvi_embedding`) and their AnnData forms, scanpy's way (:func:`pca`,
:func:`harmony`, :func:`scvi`: ``scvae.tl``). The workflow's ``baseline`` stage, which
writes each as a run file like a trained variant's, is :mod:`scvae.stages.baseline`;
run names (``pca<N>``, ``harmony``, ``scvi``, ``scvi_e<N>``) and which runs a dataset
gets are in :mod:`scvae.workflow_runs`.

The batch and covariates come from the preprocessing record:
``uns["scvae"]["preprocess"]["batch_key"]`` (the column, ``"batch"``, or absent/None
without batches) and ``uns["scvae"]["preprocess"]["covariate_keys"]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from scvae.data.loaders import counts_data, counts_matrix
from scvae.data.ondisk import H5CSR, is_ondisk, row_chunks, row_sums, take_rows
from scvae.errors import InputError
from scvae.utils.extras import import_optional
from scvae.workflow_runs import HARMONY_N_COMPONENTS

__all__ = [
    "PCA_N_COMPONENTS",
    "BaselineUnavailable",
    "batch_columns",
    "harmony",
    "harmony_embedding",
    "median_library_size",
    "parse_target_sum",
    "pca",
    "pca_embedding",
    "scvi",
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
    if counts_data(adata) is None:
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
    (:func:`scvae.stages.baseline.run_baseline` puts it in ``obsm["X_scvae"]``).

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
        harmonypy = import_optional("harmonypy", "the Harmony baseline")
    except ImportError as err:
        raise BaselineUnavailable(str(err)) from err
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
        scvi = import_optional("scvi", "the scVI baseline")
    except ImportError as err:
        raise BaselineUnavailable(str(err)) from err
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


# --------------------------------------------------------------------------------------
# The embeddings into an AnnData, scanpy's way (scvae.tl.pca, scvae.tl.harmony, scvae.tl.scvi)
# --------------------------------------------------------------------------------------

PCA_N_COMPONENTS = 50
"""Principal components of :func:`pca` by default (scanpy's ``n_comps``)."""


def _store_embedding(
    adata: ad.AnnData, emb: np.ndarray, key_added: str, params: dict, copy: bool
) -> ad.AnnData | None:
    """``obsm[key_added]`` and its settings in ``uns[<key_added without "X_">]["params"]``."""
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = emb
    uns_key = key_added.removeprefix("X_")
    adata.uns[uns_key] = {"params": params}
    logger.info(
        "%s: added obsm[%r] (%d dimensions), uns[%r]['params']",
        params["method"],
        key_added,
        emb.shape[1],
        uns_key,
    )
    return adata if copy else None


def pca(
    adata: ad.AnnData,
    *,
    n_components: int = PCA_N_COMPONENTS,
    target_sum: float | None = None,
    seed: int = 0,
    key_added: str = "X_pca",
    copy: bool = False,
) -> ad.AnnData | None:
    """PCA of the log-normalized counts, the ``pca<N>`` baseline (:func:`pca_embedding`).

    Parameters
    ----------
    adata
        Cells with raw counts (``layers["counts"]``, else ``X``); the counts are not
        changed (the normalization is done on a private copy).
    n_components
        Number of principal components.
    target_sum
        Counts per cell after normalization; None: the median library size.
    seed
        ``random_state`` of the PCA.
    key_added
        obsm key of the embedding.
    copy
        Return a copy with the embedding instead of writing into ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy when ``copy=True``, else None. Written: ``obsm[key_added]`` (cells x
        ``n_components``, float32) and ``uns[key]["params"]`` (``method``,
        ``n_components``, ``target_sum``, ``seed``), ``key`` being ``key_added``
        without its ``"X_"`` (``uns["pca"]`` by default, as scanpy).
    """
    target = median_library_size(adata) if target_sum is None else float(target_sum)
    emb = pca_embedding(adata, n_components=n_components, target_sum=target, seed=seed)
    params = {
        "method": "pca",
        "n_components": int(n_components),
        "target_sum": target,
        "seed": int(seed),
    }
    return _store_embedding(adata, emb, key_added, params, copy)


def harmony(
    adata: ad.AnnData,
    batch_key: str | Sequence[str],
    *,
    n_components: int = HARMONY_N_COMPONENTS,
    target_sum: float | None = None,
    seed: int = 0,
    n_threads: int = 0,
    key_added: str = "X_harmony",
    copy: bool = False,
) -> ad.AnnData | None:
    """Harmony on the PCA of the log-normalized counts, the ``harmony`` baseline.

    :func:`harmony_embedding`: the PCA of :func:`pca`, corrected by harmonypy for the
    ``batch_key`` columns.

    Parameters
    ----------
    adata
        Cells with raw counts and the batch columns in ``obs``.
    batch_key
        obs column of the batch, or several columns (the batch, then covariates).
    n_components
        Principal components to correct.
    target_sum
        Counts per cell after normalization; None: the median library size.
    seed
        Seed of the PCA and of Harmony's k-means initialization.
    n_threads
        Harmony's threads (0: one per physical core); the result does not depend on it.
    key_added
        obsm key of the embedding.
    copy
        Return a copy with the embedding instead of writing into ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy when ``copy=True``, else None. Written: ``obsm[key_added]`` (cells x
        ``n_components``, float32) and ``uns[key]["params"]`` (``method``,
        ``n_components``, ``target_sum``, ``batch_keys``, ``seed``), ``key`` being
        ``key_added`` without its ``"X_"`` (``uns["harmony"]`` by default).

    Raises
    ------
    BaselineUnavailable
        When harmonypy is not installed.
    InputError
        When a batch column is missing.
    """
    batch_keys = [batch_key] if isinstance(batch_key, str) else [str(k) for k in batch_key]
    target = median_library_size(adata) if target_sum is None else float(target_sum)
    emb = harmony_embedding(
        adata,
        batch_keys=batch_keys,
        n_components=n_components,
        target_sum=target,
        seed=seed,
        n_threads=n_threads,
    )
    params = {
        "method": "harmony",
        "n_components": int(n_components),
        "target_sum": target,
        "batch_keys": batch_keys,
        "seed": int(seed),
    }
    return _store_embedding(adata, emb, key_added, params, copy)


def scvi(
    adata: ad.AnnData,
    *,
    batch_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    n_latent: int | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    n_threads: int = 0,
    key_added: str = "X_scvi",
    copy: bool = False,
) -> ad.AnnData | None:
    """The latent means of scVI, the ``scvi`` baseline (:func:`scvi_embedding`).

    Parameters
    ----------
    adata
        Cells with raw counts (read into memory).
    batch_key
        obs column of the batch; None: none.
    covariate_keys
        obs columns of categorical covariates.
    n_latent
        Latent dimension; None: scvi-tools' default.
    max_epochs
        Training epochs; None: scvi-tools' rule.
    seed
        scvi-tools' seed.
    n_threads
        torch threads (0: torch's default).
    key_added
        obsm key of the embedding.
    copy
        Return a copy with the embedding instead of writing into ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy when ``copy=True``, else None. Written: ``obsm[key_added]`` (cells x
        ``n_latent``, float32) and ``uns[key]["params"]`` (``method``, ``n_latent``,
        ``gene_likelihood``, ``max_epochs`` (the epochs run), ``seed``, and
        ``batch_key`` and ``covariate_keys`` when given), ``key`` being ``key_added``
        without its ``"X_"`` (``uns["scvi"]`` by default).

    Raises
    ------
    BaselineUnavailable
        When scvi-tools is not installed.
    """
    emb, settings = scvi_embedding(
        adata,
        batch_key=batch_key,
        covariate_keys=list(covariate_keys),
        n_latent=n_latent,
        max_epochs=max_epochs,
        seed=seed,
        n_threads=n_threads,
    )
    params = {"method": "scvi", **settings, "seed": int(seed)}
    return _store_embedding(adata, emb, key_added, params, copy)
