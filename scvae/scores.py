"""Scores of an embedding and its clusterings against cell-type labels (the AnnData edge).

The metrics themselves are plain functions on arrays (:mod:`scvae.metrics`); this module
picks which to compute and where they go. :func:`label_scores` and
:func:`posterior_sample_scores` score an array against labels (KMeans and Leiden);
:func:`score` scores an embedding in an AnnData and the clusterings that
:func:`scvae.clustering.cluster` added, and stores the metrics in
``uns["scvae"]["cluster"]["metrics"]`` with its settings in
``uns["scvae"]["cluster"]["score_params"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np

from scvae import metrics as M
from scvae.clustering import (
    checked_embedding,
    leiden_clusterings,
    leiden_labels,
    resolution_tag,
    scvae_section,
)
from scvae.errors import InputError

__all__ = [
    "SCIB_RESOLUTIONS",
    "label_scores",
    "leiden_resolution_scores",
    "posterior_sample_scores",
    "score",
]

logger = logging.getLogger(__name__)

SCIB_RESOLUTIONS = (0.25, 0.5, 1.0, 1.5, 2.0)
"""Leiden resolutions over which the best ARI/NMI is taken (a subset of scIB's grid)."""


def label_scores(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
    kmeans_fits: int = 5,
) -> dict[str, float]:
    """KMeans (k = number of labels) and Leiden scores of an embedding against labels.

    ``kmeans_fits`` KMeans fits are averaged (:func:`scvae.metrics.kmeans_ari_nmi`);
    Leiden is :func:`scvae.clustering.leiden_labels`.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    labels
        Cell-type labels (no missing values).
    resolution, n_neighbors
        Leiden settings.
    seed
        Seed of KMeans and Leiden.
    kmeans_fits
        KMeans fits averaged in the KMeans scores.

    Returns
    -------
    dict
        ``kmeans_ari``, ``kmeans_nmi``, ``leiden_ari``, ``leiden_nmi``.
    """
    km = M.kmeans_ari_nmi(X, labels, rng=seed, n_repeats=kmeans_fits)
    clusters = leiden_labels(X, resolution=resolution, n_neighbors=n_neighbors, seed=seed)
    return {
        "kmeans_ari": km["ari"],
        "kmeans_nmi": km["nmi"],
        "leiden_ari": M.ari(labels, clusters),
        "leiden_nmi": M.nmi(labels, clusters),
    }


def leiden_resolution_scores(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    resolutions: Sequence[float] = SCIB_RESOLUTIONS,
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, float]:
    """Leiden ARI/NMI at each resolution on one kNN graph, and the best of them.

    scIB (Luecken et al. 2022) scores Leiden at the resolution that agrees best with the
    labels (its grid runs from 0.1 to 2 in steps of 0.1; here a coarser grid). Taking the
    best over resolutions removes the advantage an embedding gets from happening to suit
    one fixed resolution; the fixed-resolution scores are reported beside it.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    labels
        Cell-type labels (no missing values).
    resolutions
        Leiden resolutions.
    n_neighbors
        Neighbours of the kNN graph.
    seed
        Seed of the graph and of Leiden.

    Returns
    -------
    dict
        ``leiden_ari_r<res>`` and ``leiden_nmi_r<res>`` per resolution (tags as
        :func:`scvae.clustering.resolution_tag`), ``leiden_ari_best`` and
        ``leiden_nmi_best`` (each the maximum over resolutions, taken separately), and
        ``leiden_best_resolution`` (the resolution of the best ARI).
    """
    clusterings = leiden_clusterings(X, resolutions=resolutions, n_neighbors=n_neighbors, seed=seed)
    out: dict[str, float] = {}
    aris, nmis = {}, {}
    for r, clusters in clusterings.items():
        tag = resolution_tag(r)
        aris[r] = out[f"leiden_ari_{tag}"] = M.ari(labels, clusters)
        nmis[r] = out[f"leiden_nmi_{tag}"] = M.nmi(labels, clusters)
    best = max(aris, key=aris.get)
    out["leiden_ari_best"] = aris[best]
    out["leiden_nmi_best"] = max(nmis.values())
    out["leiden_best_resolution"] = float(best)
    return out


def posterior_sample_scores(
    loc: np.ndarray,
    scale: np.ndarray,
    labels: np.ndarray,
    *,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
    kmeans_fits: int = 5,
) -> dict[str, float]:
    """:func:`label_scores` of one draw ``z ~ q(z | x)`` per cell.

    The posterior means of a collapsed model can keep a tiny trace of structure
    (every mean is close to 0, but KMeans and kNN graphs do not care about scale), so
    scores on the means can overstate what the code carries. A draw from the
    posterior adds the noise the model itself attributes to each code: when the means
    are spread well beyond the posterior scales the scores barely move, and when they
    are not (collapse) the structure drowns.

    Parameters
    ----------
    loc, scale
        Posterior means and standard deviations, cells x latent dimensions.
    labels
        Cell-type labels (no missing values).
    resolution, n_neighbors
        Leiden settings, as in :func:`scvae.clustering.cluster`.
    seed
        Seed of the draw, KMeans and Leiden.
    kmeans_fits
        KMeans fits averaged in the KMeans scores.

    Returns
    -------
    dict
        ``kmeans_ari_sample``, ``kmeans_nmi_sample``, ``leiden_ari_sample``,
        ``leiden_nmi_sample``.
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if loc.shape != scale.shape:
        raise InputError(f"posterior means {loc.shape} and scales {scale.shape} differ in shape")
    z = loc + scale * np.random.default_rng(seed).standard_normal(loc.shape)
    scores = label_scores(
        z,
        labels,
        resolution=resolution,
        n_neighbors=n_neighbors,
        seed=seed,
        kmeans_fits=kmeans_fits,
    )
    return {f"{name}_sample": value for name, value in scores.items()}


def _cluster_columns(adata: ad.AnnData, cluster_keys: Mapping[str, str] | None) -> dict:
    """``{tag: obs column}``, primary clustering first."""
    if cluster_keys is None:
        params = adata.uns.get("scvae", {}).get("cluster", {}).get("params")
        if params is None:
            raise InputError(
                "no clustering recorded in uns['scvae']['cluster']['params']; run "
                "scvae.clustering.cluster first or pass cluster_keys"
            )
        # After an h5ad round trip these lists come back as numpy arrays.
        cluster_keys = {
            resolution_tag(r): str(k)
            for r, k in zip(params["resolutions"], params["keys"], strict=True)
        }
    missing = [col for col in cluster_keys.values() if col not in adata.obs]
    if missing:
        raise InputError(f"cluster columns {missing} not found in obs")
    if not cluster_keys:
        raise InputError("cluster_keys is empty")
    return dict(cluster_keys)


def _labels(adata: ad.AnnData, label_key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(labels of labelled cells, mask of labelled cells)``, or None without labels."""
    if label_key not in adata.obs:
        logger.info("no obs[%r]: computing label-free metrics only", label_key)
        return None
    series = adata.obs[label_key]
    mask = series.notna().to_numpy()
    values = series[mask].astype(str).to_numpy()
    if np.unique(values).size < 2:
        logger.warning(
            "obs[%r] has fewer than 2 distinct labels: computing label-free metrics only",
            label_key,
        )
        return None
    if not mask.all():
        logger.warning(
            "obs[%r] is missing for %d of %d cells; label metrics use the %d labelled cells",
            label_key,
            (~mask).sum(),
            mask.size,
            mask.sum(),
        )
    return values, mask


def score(
    adata: ad.AnnData,
    *,
    use_rep: str = "X_scvae",
    label_key: str = "label",
    cluster_keys: Mapping[str, str] | None = None,
    rng: np.random.Generator | int = 0,
    knn_k: int = 15,
    kmeans_fits: int = 5,
    copy: bool = False,
) -> dict[str, float] | ad.AnnData:
    """Score an embedding and its clusterings; store and return the metrics.

    With labels in ``obs[label_key]`` (at least two distinct; cells with a missing
    label are left out of label metrics):

    - ``leiden_ari_<tag>``, ``leiden_nmi_<tag>`` per clustering (:func:`metrics.ari`,
      :func:`metrics.nmi`),
    - ``asw_label`` (:func:`metrics.asw_label`, rescaled to [0, 1]),
    - ``knn_purity`` (:func:`metrics.knn_purity` with ``k=knn_k``),
    - ``kmeans_ari``, ``kmeans_nmi`` (:func:`metrics.kmeans_ari_nmi`, k = number of
      labels, mean over ``kmeans_fits`` fits).

    With labels and posterior scales in ``obsm[f"{use_rep}_scale"]`` (a VAE's
    latent), also the scores of one posterior draw per cell
    (:func:`posterior_sample_scores`): ``kmeans_ari_sample``, ``leiden_ari_sample``
    (primary resolution), and their NMI.

    Without labels: ``modularity_<tag>`` (on ``obsp["connectivities"]``) and
    ``silhouette_<tag>`` (raw, on the embedding) per clustering.

    Always: ``n_clusters_<tag>`` per clustering. The primary (first) clustering's
    metrics are also given without the tag (``leiden_ari``, ``n_clusters``, ...).
    ``<tag>`` is :func:`scvae.clustering.resolution_tag` of the resolution, e.g.
    ``leiden_ari_r1.0``.

    Parameters
    ----------
    adata
        Output of :func:`scvae.clustering.cluster`.
    use_rep
        Key of the embedding in ``obsm``.
    label_key
        Column of ``obs`` with cell-type labels; absent means unlabelled data.
    cluster_keys
        ``{tag: obs column}``, primary first; ``None`` takes the clusterings recorded
        by :func:`scvae.clustering.cluster` in ``uns["scvae"]["cluster"]["params"]``.
    rng
        Generator or seed for KMeans and the silhouette subsample.
    knn_k
        Neighbours for kNN purity.
    kmeans_fits
        KMeans fits whose scores are averaged (``n_repeats`` of
        :func:`metrics.kmeans_ari_nmi`).
    copy
        Score a copy of ``adata`` and return it instead of the metrics.

    Returns
    -------
    dict or AnnData
        The metrics, flat ``{metric name: number}`` with ``nan`` where a metric is
        undefined; with ``copy=True`` the scored copy instead. Written (in place or to
        the copy): ``uns["scvae"]["cluster"]["metrics"]`` (the metrics) and
        ``uns["scvae"]["cluster"]["score_params"]`` (the settings, the clusterings
        scored, the number of labelled cells and of labels). The metrics belong to
        the clustering recorded beside them, so their place is fixed (no
        ``key_added``); a new :func:`scvae.clustering.cluster` drops them.
    """
    adata = adata.copy() if copy else adata
    X = checked_embedding(adata, use_rep)
    columns = _cluster_columns(adata, cluster_keys)
    labelled = _labels(adata, label_key)

    out = _clustering_scores(adata, X, columns, labelled, rng)
    if labelled is not None:
        out.update(_embedding_label_scores(adata, X, *labelled, use_rep, rng, knn_k, kmeans_fits))

    primary = next(iter(columns))
    suffix = f"_{primary}"
    for name in [n for n in out if n.endswith(suffix)]:
        out[name.removesuffix(suffix)] = out[name]

    section = scvae_section(adata, "cluster")
    section["metrics"] = dict(out)
    section["score_params"] = {
        "use_rep": use_rep,
        "label_key": label_key,
        "has_labels": labelled is not None,
        "n_labelled": int(labelled[1].sum()) if labelled is not None else 0,
        "n_labels": int(np.unique(labelled[0]).size) if labelled is not None else 0,
        "cluster_keys": dict(columns),
        "knn_k": int(knn_k),
        "kmeans_fits": int(kmeans_fits),
    }
    logger.info(
        "score: %s; stored in uns['scvae']['cluster']['metrics']",
        ", ".join(f"{k}={v:.4g}" for k, v in out.items()),
    )
    return adata if copy else out


def _clustering_scores(
    adata: ad.AnnData,
    X: np.ndarray,
    columns: Mapping[str, str],
    labelled: tuple[np.ndarray, np.ndarray] | None,
    rng: np.random.Generator | int,
) -> dict[str, float]:
    """Per clustering: its size, and its agreement with the labels or, without, its quality."""
    out: dict[str, float] = {}
    for tag, col in columns.items():
        clusters = adata.obs[col].astype(str).to_numpy()
        out[f"n_clusters_{tag}"] = int(np.unique(clusters).size)
        if labelled is not None:
            labels, mask = labelled
            out[f"leiden_ari_{tag}"] = M.ari(labels, clusters[mask])
            out[f"leiden_nmi_{tag}"] = M.nmi(labels, clusters[mask])
        else:
            if "connectivities" not in adata.obsp:
                raise InputError(
                    "obsp['connectivities'] not found; run scvae.clustering.cluster first"
                )
            out[f"modularity_{tag}"] = M.modularity(adata.obsp["connectivities"], clusters)
            out[f"silhouette_{tag}"] = M.silhouette_clusters(X, clusters, rng=rng)
    return out


def _embedding_label_scores(
    adata: ad.AnnData,
    X: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    use_rep: str,
    rng: np.random.Generator | int,
    knn_k: int,
    kmeans_fits: int,
) -> dict[str, float]:
    """Label scores of the embedding itself, on the labelled cells.

    Also those of a posterior draw when ``obsm[f"{use_rep}_scale"]`` holds the
    posterior scales, with the Leiden settings of the recorded clustering.
    """
    Xl = X[mask]
    out = {
        "asw_label": M.asw_label(Xl, labels, rng=rng),
        "knn_purity": M.knn_purity(Xl, labels, k=min(knn_k, Xl.shape[0] - 1), rng=rng),
    }
    km = M.kmeans_ari_nmi(Xl, labels, rng=rng, n_repeats=kmeans_fits)
    out["kmeans_ari"], out["kmeans_nmi"] = km["ari"], km["nmi"]
    scale_key = f"{use_rep}_scale"
    if scale_key in adata.obsm:
        params = scvae_section(adata, "cluster").get("params", {})
        out.update(
            posterior_sample_scores(
                Xl,
                np.asarray(adata.obsm[scale_key])[mask],
                labels,
                resolution=(params.get("resolutions") or [1.0])[0],
                n_neighbors=params.get("n_neighbors", 15),
                seed=M.seed_from(rng),
                kmeans_fits=kmeans_fits,
            )
        )
    return out
