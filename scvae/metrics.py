"""Clustering and embedding metrics on plain arrays (the functional core of scoring).

One metric per function, in the style of scib-metrics: ``f(X or labels, labels, ...) ->
float``. Nothing here touches AnnData or the global random state; functions that sample
take ``rng`` (a :class:`numpy.random.Generator` or an int seed) explicitly;
:func:`seed_from` turns one into a seed for libraries that take ``random_state``. The
AnnData edge is :func:`scvae.scores.score`. ``__all__`` lists the metrics.

Conventions
-----------
- Labels and clusters are 1-D arrays of any hashable values (ints, strings,
  categoricals); they are compared for equality only.
- Shape mismatches raise :class:`ValueError`. A metric that is undefined on the input
  (for example a silhouette with a single group) returns ``nan`` and logs a warning,
  so that a collapsed embedding scores ``nan`` instead of stopping a pipeline.

References
----------
Luecken et al. 2022, "Benchmarking atlas-level data integration in single-cell
genomics", Nat Methods (scib); scib-metrics (https://scib-metrics.readthedocs.io).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "ari",
    "asw_label",
    "kmeans_ari_nmi",
    "knn_purity",
    "modularity",
    "nmi",
    "silhouette_clusters",
]

logger = logging.getLogger(__name__)

#: Silhouette is O(n^2) in time and memory; above this many cells it is computed on a
#: uniform random subsample.
SILHOUETTE_MAX_CELLS = 5000

KNN_PURITY_MAX_CELLS = 50_000
"""Cells whose neighbours :func:`knn_purity` averages at most (a random subsample above)."""


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def seed_from(rng: np.random.Generator | int) -> int:
    """Turn ``rng`` into an int seed for libraries that take ``random_state``.

    An int is passed through unchanged so that ``rng=0`` means ``random_state=0``.

    Parameters
    ----------
    rng
        Generator (one draw is taken from it) or seed.

    Returns
    -------
    int
        The seed.
    """
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**31 - 1))
    return int(rng)


def _as_labels(labels: np.ndarray | pd.Series, name: str = "labels") -> np.ndarray:
    """Integer codes for a 1-D label array; missing values are not allowed."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    values = pd.Series(arr)
    if values.isna().any():
        raise ValueError(f"{name} contain missing values; drop those cells before scoring")
    codes, _ = pd.factorize(values, sort=True)
    return codes


def _as_embedding(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (cells x features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return X


def _check_lengths(n: int, labels: np.ndarray, name: str = "labels") -> None:
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but X has {n} rows")


def _subsample(n: int, max_cells: int | None, rng: np.random.Generator | int) -> np.ndarray | slice:
    if max_cells is None or n <= max_cells:
        return slice(None)
    idx = _as_generator(rng).choice(n, size=max_cells, replace=False)
    return np.sort(idx)


def _silhouette(
    X: np.ndarray,
    groups: np.ndarray,
    max_cells: int | None,
    rng: np.random.Generator | int,
    what: str,
) -> float:
    X = _as_embedding(X)
    codes = _as_labels(groups, what)
    _check_lengths(X.shape[0], codes, what)
    idx = _subsample(X.shape[0], max_cells, rng)
    X, codes = X[idx], codes[idx]
    n_groups = np.unique(codes).size
    # sklearn's silhouette needs 2 <= n_groups <= n - 1.
    if n_groups < 2 or n_groups > X.shape[0] - 1:
        logger.warning(
            "silhouette undefined with %d %s on %d cells; returning nan",
            n_groups,
            what,
            X.shape[0],
        )
        return math.nan
    return float(silhouette_score(X, codes, metric="euclidean"))


# --------------------------------------------------------------------------------------
# label agreement
# --------------------------------------------------------------------------------------


def ari(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Compute the adjusted Rand index between two partitions.

    Follows :func:`sklearn.metrics.adjusted_rand_score` (Hubert & Arabie 1985), as
    scib does. 1 for identical partitions, about 0 for random ones; can be negative.

    Parameters
    ----------
    labels_true
        Reference labels, one per cell.
    labels_pred
        Predicted clusters, one per cell.

    Returns
    -------
    float
        The ARI.
    """
    t, p = _as_labels(labels_true, "labels_true"), _as_labels(labels_pred, "labels_pred")
    _check_lengths(t.shape[0], p, "labels_pred")
    return float(adjusted_rand_score(t, p))


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Compute the normalized mutual information between two partitions.

    Follows :func:`sklearn.metrics.normalized_mutual_info_score` with the arithmetic
    mean of the entropies as normaliser (sklearn's default and scib's choice). In [0, 1].

    Parameters
    ----------
    labels_true
        Reference labels, one per cell.
    labels_pred
        Predicted clusters, one per cell.

    Returns
    -------
    float
        The NMI.
    """
    t, p = _as_labels(labels_true, "labels_true"), _as_labels(labels_pred, "labels_pred")
    _check_lengths(t.shape[0], p, "labels_pred")
    return float(normalized_mutual_info_score(t, p, average_method="arithmetic"))


# --------------------------------------------------------------------------------------
# embedding quality against labels
# --------------------------------------------------------------------------------------


def asw_label(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    max_cells: int | None = SILHOUETTE_MAX_CELLS,
    rng: np.random.Generator | int = 0,
) -> float:
    """Average silhouette width of the embedding by label, rescaled to [0, 1].

    Follows scib's ``silhouette`` / scib-metrics' ``silhouette_label`` with
    ``rescale=True``: ``(s + 1) / 2`` where ``s`` is sklearn's mean silhouette with
    Euclidean distances; 1 means compact, well-separated label groups.

    Deviation: when there are more than ``max_cells`` cells, the silhouette is computed
    on a uniform random subsample of ``max_cells`` cells (drawn with ``rng``) to keep
    the O(n^2) cost bounded; scib uses all cells.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    labels
        Cell-type label per cell.
    max_cells
        Subsample size above which cells are subsampled; ``None`` uses all cells.
    rng
        Generator or seed for the subsample.

    Returns
    -------
    float
        Rescaled ASW in [0, 1], or ``nan`` with fewer than 2 labels.
    """
    s = _silhouette(X, labels, max_cells, rng, "labels")
    return (s + 1.0) / 2.0


def knn_purity(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 15,
    max_cells: int | None = KNN_PURITY_MAX_CELLS,
    rng: np.random.Generator | int = 0,
) -> float:
    """Mean fraction of each cell's ``k`` nearest neighbours that share its label.

    Exact Euclidean kNN (:class:`sklearn.neighbors.NearestNeighbors`) among all cells; a
    cell is never its own neighbour, even when it has exact duplicates (duplicates count
    as ordinary neighbours). The mean is over cells, so large cell types weigh more; some
    papers average per label instead. In [0, 1]; the value for a random embedding is
    about the sum of squared label frequencies. Above ``max_cells`` cells the mean is
    over a random ``max_cells`` of them (their neighbours still come from all cells):
    exact neighbours of every cell cost cells^2 distances, hours at 10^6 cells.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    labels
        Cell-type label per cell.
    k
        Number of neighbours; must be smaller than the number of cells.
    max_cells
        Cells whose neighbours are averaged at most (None: all).
    rng
        Generator or seed of that subsample.

    Returns
    -------
    float
        kNN purity.
    """
    X = _as_embedding(X)
    codes = _as_labels(labels)
    n = X.shape[0]
    _check_lengths(n, codes)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n_cells - 1] = [1, {n - 1}], got {k}")
    nn = NearestNeighbors(n_neighbors=k).fit(X)
    query = _subsample(n, max_cells, rng)
    if isinstance(query, slice):
        # kneighbors() without X leaves each point out of its own neighbour list.
        idx = nn.kneighbors(return_distance=False)
        return float((codes[idx] == codes[:, None]).mean())
    idx = nn.kneighbors(X[query], n_neighbors=k + 1, return_distance=False)
    # Leave each cell out of its own list (the last neighbour where it is not listed).
    own = idx == query[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(len(query)), drop] = False
    idx = idx[keep].reshape(len(query), k)
    return float((codes[idx] == codes[query][:, None]).mean())


def kmeans_ari_nmi(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    n_clusters: int | None = None,
    rng: np.random.Generator | int = 0,
    n_init: int = 10,
    n_repeats: int = 5,
) -> dict[str, float]:
    """ARI and NMI between the labels and a KMeans clustering of the embedding.

    Follows scib-metrics' ``nmi_ari_cluster_labels_kmeans``: KMeans with as many
    clusters as labels, then :func:`ari` and :func:`nmi`. Deviations: scib-metrics uses
    a single JAX KMeans run; here sklearn's KMeans with ``n_init`` restarts
    (k-means++), and the scores are averaged over ``n_repeats`` such fits with seeds
    ``s, s + 1, ...`` (``s`` from ``rng``). The average is there because real
    embeddings have several KMeans optima of nearly equal inertia that agree with the
    labels to different degrees: on the worm-neuron PCA 10 embedding the ARI of single
    fits moves between 0.47 and 0.54 with the seed alone, more than most differences
    between model variants.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    labels
        Cell-type label per cell.
    n_clusters
        Number of clusters; ``None`` uses the number of distinct labels.
    rng
        Generator or seed for KMeans (an int is used as ``random_state`` directly).
    n_init
        Number of KMeans restarts within one fit; the best inertia wins.
    n_repeats
        Number of KMeans fits (each with ``n_init`` restarts) whose scores are averaged.

    Returns
    -------
    dict
        ``{"ari": float, "nmi": float}``: means over the fits.
    """
    X = _as_embedding(X)
    codes = _as_labels(labels)
    _check_lengths(X.shape[0], codes)
    k = int(np.unique(codes).size) if n_clusters is None else int(n_clusters)
    if not 1 <= k <= X.shape[0]:
        raise ValueError(f"n_clusters must be in [1, {X.shape[0]}], got {k}")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    seed = seed_from(rng)
    scores = []
    for r in range(n_repeats):
        pred = KMeans(n_clusters=k, n_init=n_init, random_state=seed + r).fit_predict(X)
        scores.append((ari(codes, pred), nmi(codes, pred)))
    mean_ari, mean_nmi = np.mean(scores, axis=0)
    return {"ari": float(mean_ari), "nmi": float(mean_nmi)}


# --------------------------------------------------------------------------------------
# unsupervised (no labels)
# --------------------------------------------------------------------------------------


def silhouette_clusters(
    X: np.ndarray,
    clusters: np.ndarray,
    *,
    max_cells: int | None = SILHOUETTE_MAX_CELLS,
    rng: np.random.Generator | int = 0,
) -> float:
    """Raw mean silhouette of the embedding by cluster, in [-1, 1].

    :func:`sklearn.metrics.silhouette_score` with Euclidean distances, not rescaled
    (unlike :func:`asw_label`). Meant for unlabeled data, where it measures how well
    separated the clusters found on the embedding are; it is not comparable across
    embeddings of different dimension or scale without care.

    Deviation: above ``max_cells`` cells it is computed on a uniform random subsample
    of ``max_cells`` cells drawn with ``rng``.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    clusters
        Cluster per cell.
    max_cells
        Subsample size above which cells are subsampled; ``None`` uses all cells.
    rng
        Generator or seed for the subsample.

    Returns
    -------
    float
        Mean silhouette, or ``nan`` with a single cluster (for example a collapsed
        embedding) or one cluster per cell.
    """
    return _silhouette(X, clusters, max_cells, rng, "clusters")


def modularity(
    connectivities: sp.spmatrix | sp.sparray | np.ndarray,
    clusters: np.ndarray,
    *,
    resolution: float = 1.0,
) -> float:
    """Weighted Newman-Girvan modularity of a partition of an undirected graph.

    ``Q = 1/(2m) sum_ij [A_ij - resolution * k_i k_j / (2m)] delta(c_i, c_j)`` on the
    undirected graph that :func:`scanpy.tl.leiden` builds with ``directed=False``: the
    weight between ``i`` and ``j`` is ``W_ij + W_ji``, so a symmetric kNN
    connectivities matrix (as from :func:`scanpy.pp.neighbors`) is used as is, up to a
    factor that cancels. Matches :meth:`igraph.Graph.modularity` with weights,
    including its convention for self-loops, and hence the quantity that Leiden with
    ``objective_function="modularity"`` maximises.

    Parameters
    ----------
    connectivities
        Square non-negative weight matrix, cells x cells (sparse or dense).
    clusters
        Cluster per cell.
    resolution
        Resolution parameter (gamma) of the null model.

    Returns
    -------
    float
        Modularity in [-1/2, 1], or ``nan`` for a graph without edges.
    """
    A = sp.csr_array(connectivities, dtype=np.float64)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"connectivities must be square, got shape {A.shape}")
    codes = _as_labels(clusters, "clusters")
    _check_lengths(A.shape[0], codes, "clusters")
    if A.nnz and A.data.min() < 0:
        raise ValueError("connectivities must be non-negative")
    A = A + A.T
    two_m = A.sum()
    if two_m == 0:
        logger.warning("modularity undefined on a graph without edges; returning nan")
        return math.nan
    n_groups = int(codes.max()) + 1
    member = sp.csr_array(
        (np.ones(codes.size), (np.arange(codes.size), codes)), shape=(codes.size, n_groups)
    )
    within = (member.T @ A @ member).diagonal()
    degree = member.T @ A.sum(axis=1)
    return float(within.sum() / two_m - resolution * np.sum((degree / two_m) ** 2))
