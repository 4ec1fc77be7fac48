"""Clustering and scoring of an embedding stored in an AnnData (the AnnData edge).

:func:`cluster` builds the kNN graph, Leiden clusterings and a UMAP on
``obsm[use_rep]``; :func:`score` turns them into metrics with :mod:`scvae.metrics`;
:func:`run_cluster` is the file-to-file step the pipeline calls.

What is written where
---------------------
``cluster``
    ``obsp["distances"]``, ``obsp["connectivities"]``, ``uns["neighbors"]`` (scanpy);
    ``obs[key]`` (categorical, first resolution) and, with several resolutions,
    ``obs[f"{key}_r{res}"]`` for each; ``obsm["X_umap"]`` and ``uns["umap"]`` when
    ``umap=True``; ``uns["scvae"]["cluster"]["params"]``.
``score``
    ``uns["scvae"]["cluster"]["metrics"]`` (flat ``{name: number}``) and
    ``uns["scvae"]["cluster"]["score_params"]``.
``run_cluster``
    Both of the above, plus ``uns["scvae"]["diagnostics"]`` (the run's diagnostics
    JSON, null as NaN) when given one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from scvae import metrics as M
from scvae.errors import InputError
from scvae.utils.jsonio import jsonable as _jsonable
from scvae.utils.jsonio import read_json, write_json

__all__ = [
    "DIAGNOSTICS_SUMMARY_KEYS",
    "cluster",
    "read_json",
    "read_metrics_json",
    "resolution_tag",
    "run_cluster",
    "score",
    "write_json",
]

logger = logging.getLogger(__name__)

#: Version of the metrics JSON written by :func:`run_cluster`.
METRICS_SCHEMA_VERSION = 1


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def resolution_tag(resolution: float) -> str:
    """Suffix that names a Leiden resolution in obs keys and metric names.

    Parameters
    ----------
    resolution
        Leiden resolution.

    Returns
    -------
    str
        ``"r"`` followed by the float's repr: ``1 -> "r1.0"``, ``0.5 -> "r0.5"``.
    """
    return f"r{float(resolution)!r}"


def _scvae_uns(adata: ad.AnnData, section: str) -> dict:
    """``adata.uns["scvae"][section]``, created empty where missing."""
    root = adata.uns.setdefault("scvae", {})
    return root.setdefault(section, {})


def _embedding(adata: ad.AnnData, use_rep: str) -> np.ndarray:
    if use_rep not in adata.obsm:
        raise InputError(
            f"obsm[{use_rep!r}] not found (obsm has {sorted(adata.obsm)}); train a model or "
            "compute a baseline embedding first, or pass use_rep"
        )
    X = np.asarray(adata.obsm[use_rep])
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"obsm[{use_rep!r}] must be a non-empty 2-D array, got {X.shape}")
    if not np.isfinite(X).all():
        raise InputError(
            f"obsm[{use_rep!r}] contains NaN or infinite values; the training that wrote "
            "it probably diverged"
        )
    return X


def _check_resolutions(resolutions: Sequence[float]) -> list[float]:
    res = [float(r) for r in np.atleast_1d(np.asarray(resolutions, dtype=float))]
    if not res or any(not (r > 0 and math.isfinite(r)) for r in res):
        raise InputError(f"resolutions must be positive finite numbers, got {resolutions!r}")
    if len(set(res)) != len(res):
        raise InputError(f"resolutions must be distinct, got {resolutions!r}")
    return res


MIN_UMAP_CELLS = 4
"""Fewest cells :func:`cluster` embeds with UMAP (its spectral layout needs 4)."""


def _check_n_neighbors(n_neighbors: int, n_obs: int) -> int:
    if n_obs < 3:
        raise InputError(f"need at least 3 cells to build a kNN graph, got {n_obs}")
    if n_neighbors < 2:
        raise InputError(f"n_neighbors must be >= 2, got {n_neighbors}")
    if n_neighbors >= n_obs:
        logger.warning("n_neighbors=%d >= n_cells=%d; using %d", n_neighbors, n_obs, n_obs - 1)
        return n_obs - 1
    return int(n_neighbors)


# --------------------------------------------------------------------------------------
# clustering
# --------------------------------------------------------------------------------------


def cluster(
    adata: ad.AnnData,
    *,
    use_rep: str = "X_scvae",
    n_neighbors: int = 15,
    resolutions: Sequence[float] = (1.0,),
    key: str = "scvae_leiden",
    seed: int = 0,
    umap: bool = True,
    copy: bool = False,
) -> ad.AnnData | None:
    """Build a kNN graph on an embedding, cluster it with Leiden and embed it with UMAP.

    The graph is :func:`scanpy.pp.neighbors` on ``obsm[use_rep]`` (UMAP
    connectivities, scanpy's default neighbours key, so an earlier graph in ``adata``
    is replaced). Leiden is :func:`scanpy.tl.leiden` with ``flavor="igraph"``,
    ``n_iterations=2``, ``directed=False`` (scanpy's future defaults) at each
    resolution, all seeded with ``seed``.

    Parameters
    ----------
    adata
        Cells with an embedding in ``obsm[use_rep]``.
    use_rep
        Key of the embedding in ``obsm``.
    n_neighbors
        Neighbours per cell in the kNN graph (clamped to ``n_cells - 1``).
    resolutions
        Leiden resolutions; the first one is the primary clustering in ``obs[key]``.
    key
        Name of the primary clustering in ``obs``. With several resolutions each
        clustering also goes to ``obs[f"{key}_{resolution_tag(r)}"]``, e.g.
        ``"scvae_leiden_r0.5"``.
    seed
        Seed for the neighbour search, Leiden and UMAP.
    umap
        Whether to compute ``obsm["X_umap"]``.
    copy
        Return a modified copy instead of changing ``adata`` in place.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``, else ``None``.

    Raises
    ------
    InputError
        When the embedding is missing or not finite, or a setting is invalid.
    """
    adata = adata.copy() if copy else adata
    _embedding(adata, use_rep)
    res = _check_resolutions(resolutions)
    n_neighbors = _check_n_neighbors(n_neighbors, adata.n_obs)
    if umap and adata.n_obs < MIN_UMAP_CELLS:
        raise InputError(
            f"UMAP needs at least {MIN_UMAP_CELLS} cells, got {adata.n_obs}; use more cells "
            "(or umap=False)"
        )

    sc.pp.neighbors(adata, n_neighbors=n_neighbors, use_rep=use_rep, random_state=seed)
    keys = [key] if len(res) == 1 else [f"{key}_{resolution_tag(r)}" for r in res]
    for r, col in zip(res, keys, strict=True):
        sc.tl.leiden(
            adata,
            resolution=r,
            key_added=col,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
        )
    if len(res) > 1:
        adata.obs[key] = adata.obs[keys[0]].copy()
    if umap:
        sc.tl.umap(adata, random_state=seed)

    n_clusters = [int(adata.obs[col].nunique()) for col in keys]
    # A new clustering makes any earlier metrics stale, so the section is replaced.
    adata.uns.setdefault("scvae", {})["cluster"] = {}
    _scvae_uns(adata, "cluster")["params"] = {
        "use_rep": use_rep,
        "n_neighbors": int(n_neighbors),
        "resolutions": res,
        "keys": keys,
        "key": key,
        "n_clusters": n_clusters,
        "seed": int(seed),
        "umap": bool(umap),
        "leiden_flavor": "igraph",
        "leiden_n_iterations": 2,
    }
    added = ", ".join(
        f"obs[{col!r}] ({n} clusters at resolution {r:g})"
        for col, n, r in zip(keys, n_clusters, res, strict=True)
    )
    if len(res) > 1:
        added += f", obs[{key!r}] (= obs[{keys[0]!r}])"
    logger.info(
        "cluster on obsm[%r]: added obsp['distances', 'connectivities'], uns['neighbors'], "
        "%s%s, uns['scvae']['cluster']['params']",
        use_rep,
        added,
        ", obsm['X_umap']" if umap else "",
    )
    return adata if copy else None


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------


def leiden_labels(
    X: np.ndarray, *, resolution: float = 1.0, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Leiden clusters of an embedding, with the same graph and settings as :func:`cluster`."""
    tmp = ad.AnnData(obs=pd.DataFrame(index=np.arange(X.shape[0]).astype(str)))
    tmp.obsm["X"] = np.asarray(X, dtype=np.float32)
    n_neighbors = _check_n_neighbors(n_neighbors, tmp.n_obs)
    sc.pp.neighbors(tmp, n_neighbors=n_neighbors, use_rep="X", random_state=seed)
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return tmp.obs["leiden"].astype(str).to_numpy()


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

    ``kmeans_fits`` KMeans fits are averaged (:func:`metrics.kmeans_ari_nmi`).

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
        Leiden settings, as in :func:`cluster`.
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
                "scvae.cluster.cluster first or pass cluster_keys"
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
) -> dict[str, float]:
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
    ``<tag>`` is :func:`resolution_tag` of the resolution, e.g. ``leiden_ari_r1.0``.

    Parameters
    ----------
    adata
        Output of :func:`cluster`.
    use_rep
        Key of the embedding in ``obsm``.
    label_key
        Column of ``obs`` with cell-type labels; absent means unlabelled data.
    cluster_keys
        ``{tag: obs column}``, primary first; ``None`` takes the clusterings recorded
        by :func:`cluster` in ``uns["scvae"]["cluster"]["params"]``.
    rng
        Generator or seed for KMeans and the silhouette subsample.
    knn_k
        Neighbours for kNN purity.
    kmeans_fits
        KMeans fits whose scores are averaged (``n_repeats`` of
        :func:`metrics.kmeans_ari_nmi`).

    Returns
    -------
    dict
        Flat ``{metric name: number}``; ``nan`` where a metric is undefined. Also
        stored in ``uns["scvae"]["cluster"]["metrics"]``.
    """
    X = _embedding(adata, use_rep)
    columns = _cluster_columns(adata, cluster_keys)
    labelled = _labels(adata, label_key)

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
                    "obsp['connectivities'] not found; run scvae.cluster.cluster first"
                )
            out[f"modularity_{tag}"] = M.modularity(adata.obsp["connectivities"], clusters)
            out[f"silhouette_{tag}"] = M.silhouette_clusters(X, clusters, rng=rng)
    if labelled is not None:
        labels, mask = labelled
        Xl = X[mask]
        out["asw_label"] = M.asw_label(Xl, labels, rng=rng)
        out["knn_purity"] = M.knn_purity(Xl, labels, k=min(knn_k, Xl.shape[0] - 1))
        km = M.kmeans_ari_nmi(Xl, labels, rng=rng, n_repeats=kmeans_fits)
        out["kmeans_ari"], out["kmeans_nmi"] = km["ari"], km["nmi"]
        scale_key = f"{use_rep}_scale"
        if scale_key in adata.obsm:
            params = _scvae_uns(adata, "cluster").get("params", {})
            out.update(
                posterior_sample_scores(
                    Xl,
                    np.asarray(adata.obsm[scale_key])[mask],
                    labels,
                    resolution=(params.get("resolutions") or [1.0])[0],
                    n_neighbors=params.get("n_neighbors", 15),
                    seed=M._seed_from(rng),
                    kmeans_fits=kmeans_fits,
                )
            )

    primary = next(iter(columns))
    suffix = f"_{primary}"
    for name in [n for n in out if n.endswith(suffix)]:
        out[name.removesuffix(suffix)] = out[name]

    section = _scvae_uns(adata, "cluster")
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
    return out


# --------------------------------------------------------------------------------------
# file-to-file step
# --------------------------------------------------------------------------------------


_SCALAR = (str, bool, int, float, np.generic)
# Sections of uns["scvae"]["train"] whose scalars the metrics JSON summarizes, in
# priority order when a key appears in several (the training stage nests them).
_TRAIN_SECTIONS = ("summary", "model", "training")
# The diagnostics keys the comparison uses; the full record stays in the h5ad.
DIAGNOSTICS_SUMMARY_KEYS = (
    "verdict",
    "verdict_reason",
    "mi",
    "active_units",
    "kl_per_dim",
    "kl_total",
    "kl_aggregate",
    "iwae_ll_per_cell",
    "n_latent",
)


def _train_scalars(train: Mapping) -> dict:
    """Scalar entries of ``uns["scvae"]["train"]``, flattened one level."""
    out = {k: v for k, v in train.items() if isinstance(v, _SCALAR)}
    for section in _TRAIN_SECTIONS:
        nested = train.get(section)
        if isinstance(nested, Mapping):
            for k, v in nested.items():
                if isinstance(v, _SCALAR):
                    out.setdefault(k, v)
    return out


def _default_run_name(output_h5ad: str | os.PathLike) -> str:
    """``"<name> seed<k>"`` for the pipeline's ``results/<dataset>/<name>/seed<k>/`` layout."""
    parent = Path(output_h5ad).resolve().parent
    return f"{parent.parent.name} {parent.name}"


def run_cluster(
    input_h5ad: str | os.PathLike,
    output_h5ad: str | os.PathLike,
    metrics_json: str | os.PathLike,
    *,
    resolutions: Sequence[float] = (1.0,),
    n_neighbors: int = 15,
    kmeans_fits: int = 5,
    seed: int = 0,
    label_key: str = "label",
    use_rep: str = "X_scvae",
    key: str = "scvae_leiden",
    diagnostics_json: str | os.PathLike | None = None,
    umap_plot: str | os.PathLike | None = None,
    run_name: str | None = None,
) -> dict:
    """Cluster and score the embedding of an h5ad; write the h5ad and a metrics JSON.

    An input that is a baseline marked unavailable (``"unavailable"`` in
    ``uns["scvae"]["baseline"]``, see :func:`scvae.baseline.run_baseline`) is passed
    through without clustering and gets a metrics JSON with ``"status":
    "unavailable"`` and empty ``metrics``, so that the pipeline goes on and the
    comparison shows the gap.

    Metrics JSON keys (strict JSON, NaN as null):

    - ``schema_version`` (1), ``status`` (``"ok"`` or ``"unavailable"``), ``reason``
      (str, empty when ok), ``input`` (str), ``n_cells`` (int);
    - ``metrics``: flat ``{name: number}`` from :func:`score`;
    - ``cluster`` and ``score``: the clustering and scoring parameters;
    - ``train``: scalar entries of ``uns["scvae"]["train"]`` and of its ``summary``,
      ``model`` and ``training`` sections, flattened (``n_latent``, ``epochs``,
      ``train_seconds``, ...); ``{}`` for baselines;
    - ``baseline``: ``uns["scvae"]["baseline"]`` (``{}`` for trained models);
    - ``diagnostics``: the :data:`DIAGNOSTICS_SUMMARY_KEYS` of ``diagnostics_json``
      (``{}`` without one).

    Parameters
    ----------
    input_h5ad
        h5ad with the embedding in ``obsm[use_rep]``.
    output_h5ad
        Where to write the clustered h5ad.
    metrics_json
        Where to write the metrics JSON.
    resolutions
        Leiden resolutions, primary first.
    n_neighbors
        Neighbours per cell in the kNN graph.
    kmeans_fits
        KMeans fits averaged in the KMeans scores (see :func:`score`).
    seed
        Seed for the graph, Leiden, UMAP, KMeans and silhouette subsampling.
    label_key
        Column of ``obs`` with labels, if any.
    use_rep
        Key of the embedding in ``obsm``.
    key
        Name of the primary clustering in ``obs``.
    diagnostics_json
        Diagnostics of the same run; stored whole in ``uns["scvae"]["diagnostics"]``
        of the output h5ad and summarized in the metrics JSON.
    umap_plot
        PNG of the UMAP coloured by label and by cluster (one row of
        :func:`scvae.plotting.comparison.plot_umap_grid`); always written when given.
    run_name
        Title of the UMAP figure; default ``"<name> seed<k>"`` from the output path.

    Returns
    -------
    dict
        The content written to ``metrics_json`` (NaN as ``None``).
    """
    from scvae.data.readers import read_h5ad, write_h5ad

    # Large files: the counts stay on disk (only the embedding is clustered).
    adata = read_h5ad(input_h5ad, backed=None)
    scvae = adata.uns.setdefault("scvae", {})
    baseline = dict(scvae.get("baseline", {}))
    diagnostics = read_json(diagnostics_json) if diagnostics_json else {}
    if diagnostics:
        scvae["diagnostics"] = diagnostics
    record: dict[str, Any] = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "status": "ok",
        "reason": "",
        "input": str(input_h5ad),
        "n_cells": int(adata.n_obs),
        "metrics": {},
        "cluster": {},
        "score": {},
        "train": _train_scalars(scvae.get("train", {})),
        "baseline": baseline,
        "diagnostics": {k: diagnostics[k] for k in DIAGNOSTICS_SUMMARY_KEYS if k in diagnostics},
    }
    if "unavailable" in baseline:
        record["status"] = "unavailable"
        record["reason"] = str(baseline["unavailable"])
        logger.warning(
            "%s: baseline unavailable (%s); not clustering", input_h5ad, record["reason"]
        )
    else:
        try:
            cluster(
                adata,
                use_rep=use_rep,
                n_neighbors=n_neighbors,
                resolutions=resolutions,
                key=key,
                seed=seed,
            )
        except InputError as err:
            raise InputError(f"{input_h5ad}: {err}") from err
        record["metrics"] = score(
            adata, use_rep=use_rep, label_key=label_key, rng=seed, kmeans_fits=kmeans_fits
        )
        record["cluster"] = adata.uns["scvae"]["cluster"]["params"]
        record["score"] = adata.uns["scvae"]["cluster"]["score_params"]

    write_h5ad(adata, output_h5ad)
    record = _jsonable(record)
    write_json(record, metrics_json)
    if umap_plot is not None:
        from scvae.plotting.comparison import plot_umap_grid

        name = run_name or _default_run_name(output_h5ad)
        plot_umap_grid({name: adata}, umap_plot, label_key=label_key, cluster_key=key)
    logger.info("wrote %s and %s", output_h5ad, metrics_json)
    return record


def read_metrics_json(path: str | os.PathLike) -> dict:
    """Read a metrics JSON written by :func:`run_cluster`; null becomes NaN.

    Parameters
    ----------
    path
        The JSON file.

    Returns
    -------
    dict
        The record, with ``nan`` wherever the file has null.
    """
    return read_json(path)
