"""scIB integration metrics of an embedding with batches (scib-metrics), and their aggregates.

The metrics are scib-metrics' own functions (Luecken et al. 2022, as implemented in
scib-metrics 0.5.10), called the way its ``Benchmarker`` calls them, so that the numbers
are the field's: one approximate kNN search (pynndescent, ``random_state=0``) whose first
15, 50 and 90 neighbours feed the graph metrics, and the unintegrated reference of the
PCR comparison computed from the counts (:func:`unintegrated_pca`).

:func:`scib_scores` is the functional core on arrays; :func:`integration_scores` is the
AnnData edge (the ``cluster`` stage calls it for data with ``obs["batch"]``).

Metric names (keys ``scib_<name>``)
-----------------------------------
Bio conservation (with labels): ``isolated_labels``, ``leiden_nmi`` and ``leiden_ari``
(Leiden on the 15-neighbour graph at the resolution of best NMI, 0.2 to 2.0),
``kmeans_nmi`` and ``kmeans_ari`` (k = the number of labels), ``silhouette_label``,
``clisi``.

Batch correction: with labels ``silhouette_batch`` (scIB's batch ASW), ``bras`` (the batch
removal adapted silhouette that replaced it in scib-metrics' defaults), ``ilisi``,
``kbet`` (per label), ``graph_connectivity``, ``pcr_comparison``; without labels only
those that need none: ``ilisi``, ``kbet_global`` (kBET over all cells, Büttner et al. 2019,
as scib-metrics' ``kbet``) and ``pcr_comparison``.

Aggregates: ``bio`` and ``batch`` are the means of :data:`BIO_AGGREGATE` and
:data:`BATCH_AGGREGATE` (those computed and finite), ``total = 0.6 bio + 0.4 batch``, all
unscaled: the ``Benchmarker``'s defaults with ``get_results(min_max_scale=False)``, so
the scores are comparable across runs and papers (a min-max scaled score depends on
which other methods were benchmarked alongside). Leiden NMI/ARI and the batch silhouette
are reported but, as in those defaults, not averaged in. Without labels there is no
``bio`` and no ``total``, and ``batch`` is the mean of the label-free batch scores (not
comparable to a labelled ``batch``).

Deviations from the ``Benchmarker``: with fewer than 91 cells the neighbour counts are cut
to ``n_cells - 1``; a metric that scib-metrics cannot compute on the input (for example
the batch silhouette when every label lies in one batch) is ``nan`` with a warning
instead of an exception, and the aggregates skip it (as the ``Benchmarker``'s means skip
missing values).

References
----------
Luecken et al. 2022, "Benchmarking atlas-level data integration in single-cell
genomics", Nat Methods; scib-metrics (https://scib-metrics.readthedocs.io).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvae.data.loaders import counts_data, counts_source
from scvae.errors import InputError
from scvae.utils.extras import import_optional

__all__ = [
    "BATCH_AGGREGATE",
    "BATCH_METRICS",
    "BIO_AGGREGATE",
    "BIO_METRICS",
    "BIO_WEIGHT",
    "LABEL_FREE_BATCH_METRICS",
    "SCIB_AGGREGATES",
    "SCIB_COLUMNS",
    "SCIB_PREFIX",
    "aggregate_scores",
    "integration_scores",
    "scib_key",
    "scib_scores",
    "unintegrated_pca",
]

logger = logging.getLogger(__name__)

#: Prefix of the scIB metrics in ``metrics.json`` and the comparison tables.
SCIB_PREFIX = "scib_"
#: Bio-conservation metrics, computed with labels.
BIO_METRICS = (
    "isolated_labels",
    "leiden_nmi",
    "leiden_ari",
    "kmeans_nmi",
    "kmeans_ari",
    "silhouette_label",
    "clisi",
)
#: Batch-correction metrics, computed with labels.
BATCH_METRICS = (
    "silhouette_batch",
    "bras",
    "ilisi",
    "kbet",
    "graph_connectivity",
    "pcr_comparison",
)
#: Batch-correction metrics computed without labels.
LABEL_FREE_BATCH_METRICS = ("ilisi", "kbet_global", "pcr_comparison")
#: Metrics averaged into ``bio``: the ``Benchmarker``'s default ``BioConservation``.
BIO_AGGREGATE = ("isolated_labels", "kmeans_nmi", "kmeans_ari", "silhouette_label", "clisi")
#: Metrics averaged into ``batch``: the default ``BatchCorrection`` with labels; without
#: labels only ``ilisi``, ``kbet_global`` and ``pcr_comparison`` exist (``kbet_global``
#: is only computed without labels, so the two kBETs never meet in one mean).
BATCH_AGGREGATE = ("bras", "ilisi", "kbet", "kbet_global", "graph_connectivity", "pcr_comparison")
#: Weight of ``bio`` in ``total`` (``batch`` gets the rest), scIB's weighting.
BIO_WEIGHT = 0.6
#: The aggregates, in the order of the tables.
SCIB_AGGREGATES = ("total", "bio", "batch")
#: Every key :func:`scib_scores` can return, in the order of the tables: aggregates,
#: bio conservation, batch correction.
SCIB_COLUMNS = tuple(
    f"{SCIB_PREFIX}{name}"
    for name in dict.fromkeys(
        SCIB_AGGREGATES + BIO_METRICS + BATCH_METRICS + LABEL_FREE_BATCH_METRICS
    )
)

# The Benchmarker's neighbourhood sizes: 15 (Leiden, graph connectivity), 50 (kBET),
# 90 (LISI), all read from one search.
_NEIGHBORS = (15, 50, 90)
# The Benchmarker's unintegrated reference: scanpy's default number of components.
_REFERENCE_N_COMPS = 50


def scib_key(name: str) -> str:
    """The column name of a scIB metric or aggregate, e.g. ``"total" -> "scib_total"``.

    Parameters
    ----------
    name
        Metric or aggregate name.

    Returns
    -------
    str
        ``SCIB_PREFIX + name``.
    """
    return f"{SCIB_PREFIX}{name}"


# --------------------------------------------------------------------------------------
# aggregates
# --------------------------------------------------------------------------------------


def _mean_of(scores: Mapping[str, float], names: tuple[str, ...]) -> float | None:
    values = [float(scores[n]) for n in names if n in scores and math.isfinite(float(scores[n]))]
    return float(np.mean(values)) if values else None


def aggregate_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """The scIB aggregates of a set of metrics: ``bio``, ``batch`` and ``total``.

    ``bio`` is the mean of the :data:`BIO_AGGREGATE` metrics present and finite,
    ``batch`` that of the :data:`BATCH_AGGREGATE` ones, ``total = 0.6 bio + 0.4 batch``
    (:data:`BIO_WEIGHT`). Unscaled, as scib-metrics' ``Benchmarker.get_results(
    min_max_scale=False)``.

    Parameters
    ----------
    scores
        ``{metric name: value}`` without the ``scib_`` prefix (as :func:`scib_scores`
        computes them before prefixing).

    Returns
    -------
    dict
        ``bio``, ``batch`` and ``total``, each only when it can be computed (no ``bio``
        and hence no ``total`` without bio metrics).
    """
    out: dict[str, float] = {}
    bio = _mean_of(scores, BIO_AGGREGATE)
    batch = _mean_of(scores, BATCH_AGGREGATE)
    if bio is not None and batch is not None:
        out["total"] = BIO_WEIGHT * bio + (1.0 - BIO_WEIGHT) * batch
    if bio is not None:
        out["bio"] = bio
    if batch is not None:
        out["batch"] = batch
    return out


# --------------------------------------------------------------------------------------
# the metrics on arrays
# --------------------------------------------------------------------------------------


def _import_scib_metrics():
    """scib-metrics with JAX on the CPU and its own logger at WARNING.

    JAX picks its platform when first used, so the variable is set before the import;
    an explicit ``JAX_PLATFORMS`` of the user wins. Without it JAX probes for
    accelerators and may warn that it falls back to the CPU (the jaxlib installed
    with scib-metrics is the CPU build).
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    scib_metrics = import_optional("scib_metrics", "the scIB metrics")

    # Its INFO lines ("... consists of a single batch or is too small. Skip.") go to a
    # handler of its own, past the stage's log.
    scib_metrics.settings.verbosity = logging.WARNING
    return scib_metrics


def _as_strings(values: np.ndarray | pd.Series, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{what} must be 1-D with one entry per cell ({n}), got {arr.shape}")
    series = pd.Series(arr)
    if series.isna().any():
        raise ValueError(f"{what} contain missing values; drop those cells first")
    return series.astype(str).to_numpy(dtype=object)


def _checked(name: str, fn: Callable[[], float], timings: dict[str, float]) -> float:
    """One metric's value; ``nan`` with a warning when scib-metrics cannot compute it."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(fn())
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as err:
            logger.warning("scIB %s cannot be computed here (%s); recorded as nan", name, err)
            value = math.nan
    for w in {str(w.message) for w in caught}:
        logger.info("scIB %s: %s", name, w)
    timings[name] = time.perf_counter() - start
    return value


def scib_scores(
    X: np.ndarray,
    batches: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series | None = None,
    *,
    X_pre: np.ndarray,
    n_jobs: int = 1,
) -> dict[str, float]:
    """The scIB metrics of an embedding with batches, and their aggregates.

    See the module docstring for the metrics, the aggregates and the deviations from
    scib-metrics' ``Benchmarker``. Deterministic: the kNN search, KMeans and Leiden use
    scib-metrics' fixed seeds, not the run's.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    batches
        Batch of each cell (at least two distinct).
    labels
        Cell-type label of each cell, or None for the label-free batch scores only.
    X_pre
        The unintegrated embedding of the same cells, the reference of the PCR
        comparison (:func:`unintegrated_pca`).
    n_jobs
        Threads of the kNN search and of the Leiden resolution search.

    Returns
    -------
    dict
        ``{"scib_<name>": value}`` for each metric computed (:data:`BIO_METRICS` and
        :data:`BATCH_METRICS` with labels, :data:`LABEL_FREE_BATCH_METRICS` without),
        then ``scib_total``, ``scib_bio``, ``scib_batch`` as :func:`aggregate_scores`
        gives them.

    Raises
    ------
    ValueError
        When the shapes disagree, values are missing or not finite, or there are fewer
        than two batches or three cells.
    ImportError
        When scib-metrics is not installed (the ``integration`` extra).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] == 0 or not np.isfinite(X).all():
        raise ValueError(f"X must be a finite, non-empty 2-D array, got shape {X.shape}")
    n = X.shape[0]
    X_pre = np.asarray(X_pre)
    if X_pre.ndim != 2 or X_pre.shape[0] != n:
        raise ValueError(f"X_pre must be 2-D with {n} rows, got shape {X_pre.shape}")
    if n < 3:
        raise ValueError(f"the scIB metrics need at least 3 cells, got {n}")
    batches = _as_strings(batches, n, "batches")
    if np.unique(batches).size < 2:
        raise ValueError("the scIB batch metrics need at least two batches")
    if labels is not None:
        labels = _as_strings(labels, n, "labels")

    scib_metrics = _import_scib_metrics()
    # An optional dependency (the integration extra), here after the check above.
    from scib_metrics.nearest_neighbors import pynndescent

    start = time.perf_counter()
    k_max = min(max(_NEIGHBORS), n - 1)
    search = pynndescent(X, n_neighbors=k_max, random_state=0, n_jobs=n_jobs)
    nn = {k: search.subset_neighbors(n=min(k, k_max)) for k in _NEIGHBORS}

    t: dict[str, float] = {"neighbors": time.perf_counter() - start}
    out: dict[str, float] = {}
    if labels is not None:
        out["isolated_labels"] = _checked(
            "isolated_labels", lambda: scib_metrics.isolated_labels(X, labels, batches), t
        )
        leiden: dict[str, float] = {}

        def _leiden() -> float:
            leiden.update(scib_metrics.nmi_ari_cluster_labels_leiden(nn[15], labels, n_jobs=n_jobs))
            return leiden["nmi"]

        out["leiden_nmi"] = _checked("leiden_nmi_ari", _leiden, t)
        out["leiden_ari"] = float(leiden.get("ari", math.nan))
        kmeans: dict[str, float] = {}

        def _kmeans() -> float:
            kmeans.update(scib_metrics.nmi_ari_cluster_labels_kmeans(X, labels))
            return kmeans["nmi"]

        out["kmeans_nmi"] = _checked("kmeans_nmi_ari", _kmeans, t)
        out["kmeans_ari"] = float(kmeans.get("ari", math.nan))
        out["silhouette_label"] = _checked(
            "silhouette_label", lambda: scib_metrics.silhouette_label(X, labels), t
        )
        out["clisi"] = _checked("clisi", lambda: scib_metrics.clisi_knn(nn[90], labels), t)
        out["silhouette_batch"] = _checked(
            "silhouette_batch", lambda: scib_metrics.silhouette_batch(X, labels, batches), t
        )
        out["bras"] = _checked("bras", lambda: scib_metrics.bras(X, labels, batches), t)
    out["ilisi"] = _checked("ilisi", lambda: scib_metrics.ilisi_knn(nn[90], batches), t)
    if labels is not None:
        out["kbet"] = _checked(
            "kbet", lambda: scib_metrics.kbet_per_label(nn[50], batches, labels), t
        )
        out["graph_connectivity"] = _checked(
            "graph_connectivity", lambda: scib_metrics.graph_connectivity(nn[15], labels), t
        )
    else:
        out["kbet_global"] = _checked(
            "kbet_global", lambda: scib_metrics.kbet(nn[50], batches)[0], t
        )
    out["pcr_comparison"] = _checked(
        "pcr_comparison",
        lambda: scib_metrics.pcr_comparison(X_pre, X, batches, categorical=True),
        t,
    )
    logger.debug("scIB metric seconds: %s", ", ".join(f"{k}={v:.1f}" for k, v in t.items()))
    out.update(aggregate_scores(out))
    prefixed = {scib_key(k): v for k, v in out.items()}
    return {k: prefixed[k] for k in SCIB_COLUMNS if k in prefixed}


def unintegrated_pca(counts: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """The unintegrated reference of the PCR comparison: PCA of log-normalized counts.

    As scib-metrics' ``Benchmarker`` prepares it from log-normalized data: scanpy's
    ``normalize_total`` (to the median library size), ``log1p`` and ``tl.pca`` with the
    ARPACK solver on all genes given (the highly variable genes, in the pipeline), 50
    components or ``min(n_cells, n_genes) - 1`` when fewer.

    Parameters
    ----------
    counts
        Raw counts, cells x genes (dense or sparse).

    Returns
    -------
    numpy.ndarray
        Cells x components.
    """
    # On use, as scvae.clustering in integration_scores: the comparison stage does without.
    import scanpy as sc

    X = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    n_comps = min(_REFERENCE_N_COMPS, min(X.shape) - 1)
    if n_comps < 1:
        raise ValueError(f"cannot compute a PCA of a {X.shape} matrix")
    work = ad.AnnData(X=X)
    sc.pp.normalize_total(work)
    sc.pp.log1p(work)
    sc.tl.pca(work, n_comps=n_comps, svd_solver="arpack")
    return np.asarray(work.obsm["X_pca"])


# --------------------------------------------------------------------------------------
# the AnnData edge
# --------------------------------------------------------------------------------------


def _counts(adata: ad.AnnData, layer: str) -> sp.csr_matrix | np.ndarray:
    """``layers[layer]`` (else ``X``) in memory, also when the file was read backed."""
    counts = counts_data(adata, layer)
    if counts is None:
        raise InputError(f"no layers[{layer!r}] and no X: the PCR comparison needs the counts")
    if hasattr(counts, "to_memory"):  # anndata's on-disk CSR dataset
        counts = counts.to_memory()
    return counts


def _labelled_cells(adata: ad.AnnData, label_key: str) -> np.ndarray | None:
    """Mask of the cells with a label, or None when there are not two distinct labels."""
    if label_key not in adata.obs:
        logger.info("no obs[%r]: label-free scIB batch scores only", label_key)
        return None
    series = adata.obs[label_key]
    mask = series.notna().to_numpy()
    if series[mask].astype(str).nunique() < 2:
        logger.warning(
            "obs[%r] has fewer than 2 distinct labels: label-free scIB batch scores only",
            label_key,
        )
        return None
    if not mask.all():
        logger.warning(
            "obs[%r] is missing for %d of %d cells; the scIB metrics use the %d labelled cells",
            label_key,
            (~mask).sum(),
            mask.size,
            mask.sum(),
        )
    return mask


def integration_scores(
    adata: ad.AnnData,
    *,
    use_rep: str = "X_scvae",
    batch_key: str = "batch",
    label_key: str = "label",
    counts_layer: str = "counts",
    n_jobs: int = 1,
) -> dict[str, float]:
    """The scIB metrics of an embedding in an AnnData; stored in ``uns`` and returned.

    :func:`scib_scores` of ``obsm[use_rep]`` with the batches in ``obs[batch_key]``,
    the labels in ``obs[label_key]`` (when there are at least two distinct; cells
    without a label are left out of every scIB metric) and the reference PCA
    (:func:`unintegrated_pca`) of ``layers[counts_layer]`` (else ``X``).

    Stored: the metrics are added to ``uns["scvae"]["cluster"]["metrics"]`` and the
    settings go to ``uns["scvae"]["cluster"]["scib_params"]`` (``batch_key``,
    ``label_key``, ``has_labels``, ``n_cells``, ``n_batches``, ``bio_aggregate``,
    ``batch_aggregate``, ``bio_weight``, ``reference``, ``seconds``).

    Parameters
    ----------
    adata
        Data with an embedding, batches and raw counts.
    use_rep
        Key of the embedding in ``obsm``.
    batch_key
        Column of ``obs`` with the batches.
    label_key
        Column of ``obs`` with the cell-type labels; absent means unlabelled data.
    counts_layer
        Layer with the raw counts.
    n_jobs
        Threads of the kNN search and the Leiden resolution search.

    Returns
    -------
    dict
        ``{"scib_<name>": value}`` (see :func:`scib_scores`); ``{}`` when the cells
        scored hold a single batch (logged), since then there is nothing to integrate.

    Raises
    ------
    InputError
        When ``obs[batch_key]`` is missing or has missing values, or the embedding is
        missing or not finite.
    ImportError
        When scib-metrics is not installed (the ``integration`` extra).
    """
    # Here, not at the top: scvae.clustering loads scanpy, and the comparison stage
    # imports this module's names without needing it.
    from scvae.clustering import checked_embedding, scvae_section

    X = checked_embedding(adata, use_rep)
    if batch_key not in adata.obs:
        raise InputError(
            f"obs[{batch_key!r}] not found (obs has {list(adata.obs.columns)}); the scIB "
            "metrics need each cell's batch"
        )
    batches = adata.obs[batch_key]
    if batches.isna().any():
        raise InputError(
            f"obs[{batch_key!r}] is missing for {int(batches.isna().sum())} cells; every "
            "cell needs a batch"
        )
    mask = _labelled_cells(adata, label_key)
    cells = np.ones(adata.n_obs, dtype=bool) if mask is None else mask
    n_batches = int(batches[cells].astype(str).nunique())
    if n_batches < 2:
        logger.warning(
            "obs[%r] holds a single batch in the cells scored: no scIB metrics", batch_key
        )
        return {}
    start = time.perf_counter()
    counts = _counts(adata, counts_layer)
    X_pre = unintegrated_pca(counts[np.flatnonzero(cells)] if mask is not None else counts)
    labels = None if mask is None else adata.obs[label_key][cells].to_numpy()
    out = scib_scores(X[cells], batches[cells].to_numpy(), labels, X_pre=X_pre, n_jobs=n_jobs)
    seconds = time.perf_counter() - start

    section = scvae_section(adata, "cluster")
    section.setdefault("metrics", {}).update(out)
    section["scib_params"] = {
        "batch_key": batch_key,
        "label_key": label_key,
        "has_labels": mask is not None,
        "n_cells": int(cells.sum()),
        "n_batches": n_batches,
        "bio_aggregate": list(BIO_AGGREGATE) if mask is not None else [],
        "batch_aggregate": [m for m in BATCH_AGGREGATE if scib_key(m) in out],
        "bio_weight": BIO_WEIGHT,
        "reference": (
            f"PCA ({X_pre.shape[1]} components) of log-normalized "
            f"{counts_source(adata, counts_layer)}"
        ),
        "seconds": float(seconds),
    }
    logger.info(
        "scIB metrics of obsm[%r] (%d cells, %d batches) in %.0f s: %s",
        use_rep,
        cells.sum(),
        n_batches,
        seconds,
        ", ".join(f"{k}={v:.3f}" for k, v in out.items()),
    )
    return out
