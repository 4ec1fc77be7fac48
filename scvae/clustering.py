"""Clustering of an embedding: kNN graph, Leiden and UMAP (scanpy).

:func:`cluster` works on an embedding stored in an AnnData and records what it did;
:func:`leiden_labels` clusters a plain array with the same graph and settings.
:mod:`scvae.scores` scores the clusterings; :func:`scvae.stages.cluster.run_cluster` is the
pipeline's file-to-file step.

What :func:`cluster` writes: ``obsp["distances"]``, ``obsp["connectivities"]``,
``uns["neighbors"]`` (scanpy); ``obs[key_added]`` (categorical, first resolution) and,
with several resolutions, ``obs[f"{key_added}_r{res}"]`` for each; ``obsm["X_umap"]`` and
``uns["umap"]`` when ``umap=True``; ``uns["scvae"]["cluster"]["params"]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from scvae.errors import InputError

__all__ = [
    "MIN_UMAP_CELLS",
    "checked_embedding",
    "cluster",
    "leiden_clusterings",
    "leiden_labels",
    "resolution_tag",
    "scvae_section",
]

logger = logging.getLogger(__name__)

MIN_UMAP_CELLS = 4
"""Fewest cells :func:`cluster` embeds with UMAP (its spectral layout needs 4)."""

# Leiden as scanpy will run it by default: the igraph implementation, two iterations,
# on the undirected graph.
_LEIDEN = {"flavor": "igraph", "n_iterations": 2, "directed": False}


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


def scvae_section(adata: ad.AnnData, section: str) -> dict:
    """``adata.uns["scvae"][section]``, created empty where missing.

    Parameters
    ----------
    adata
        The data.
    section
        Name of the section (``"cluster"``, ...).

    Returns
    -------
    dict
        The section itself (changes to it change ``adata``).
    """
    root = adata.uns.setdefault("scvae", {})
    return root.setdefault(section, {})


def checked_embedding(adata: ad.AnnData, use_rep: str) -> np.ndarray:
    """``obsm[use_rep]`` as an array, checked to be a finite, non-empty matrix.

    Parameters
    ----------
    adata
        The data.
    use_rep
        Key of the embedding in ``obsm``.

    Returns
    -------
    numpy.ndarray
        Cells x dimensions.

    Raises
    ------
    InputError
        When the embedding is missing, not 2-D or not finite.
    """
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


def _check_n_neighbors(n_neighbors: int, n_obs: int) -> int:
    if n_obs < 3:
        raise InputError(f"need at least 3 cells to build a kNN graph, got {n_obs}")
    if n_neighbors < 2:
        raise InputError(f"n_neighbors must be >= 2, got {n_neighbors}")
    if n_neighbors >= n_obs:
        logger.warning("n_neighbors=%d >= n_cells=%d; using %d", n_neighbors, n_obs, n_obs - 1)
        return n_obs - 1
    return int(n_neighbors)


def cluster(
    adata: ad.AnnData,
    *,
    use_rep: str = "X_scvae",
    n_neighbors: int = 15,
    resolutions: Sequence[float] = (1.0,),
    key_added: str = "scvae_leiden",
    seed: int = 0,
    umap: bool = True,
    umap_max_cells: int | None = None,
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
        Leiden resolutions; the first one is the primary clustering in
        ``obs[key_added]``.
    key_added
        Name of the primary clustering in ``obs``. With several resolutions each
        clustering also goes to ``obs[f"{key_added}_{resolution_tag(r)}"]``, e.g.
        ``"scvae_leiden_r0.5"``.
    seed
        Seed for the neighbour search, Leiden and UMAP.
    umap
        Whether to compute ``obsm["X_umap"]``.
    umap_max_cells
        Above this many cells the UMAP is computed on a random subsample of this size
        (its own kNN graph, same settings; rows of the other cells are NaN, which
        scatter plots leave out), since a layout of 10^6 points takes long and draws no
        better than one of 10^5. The graph and the Leiden clusters use every cell.
        None: always all cells.
    copy
        Return a modified copy instead of changing ``adata`` in place.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``, else ``None``. Written (to the copy or in place):

        - ``obs[key_added]``: the clusters at the first resolution (categorical), and
          with several resolutions ``obs[f"{key_added}_{resolution_tag(r)}"]`` for each;
        - ``obsp["distances"]``, ``obsp["connectivities"]``, ``uns["neighbors"]``: the
          kNN graph (scanpy's keys; an earlier graph is replaced);
        - ``obsm["X_umap"]``, ``uns["umap"]``: with ``umap=True``;
        - ``uns["scvae"]["cluster"]["params"]``: the settings, the obs keys and the
          number of clusters (the section is replaced, dropping stale metrics).

    Raises
    ------
    InputError
        When the embedding is missing or not finite, or a setting is invalid.
    """
    adata = adata.copy() if copy else adata
    checked_embedding(adata, use_rep)
    res = _check_resolutions(resolutions)
    n_neighbors = _check_n_neighbors(n_neighbors, adata.n_obs)
    if umap and adata.n_obs < MIN_UMAP_CELLS:
        raise InputError(
            f"UMAP needs at least {MIN_UMAP_CELLS} cells, got {adata.n_obs}; use more cells "
            "(or umap=False)"
        )

    sc.pp.neighbors(adata, n_neighbors=n_neighbors, use_rep=use_rep, random_state=seed)
    keys = [key_added] if len(res) == 1 else [f"{key_added}_{resolution_tag(r)}" for r in res]
    for r, col in zip(res, keys, strict=True):
        sc.tl.leiden(adata, resolution=r, key_added=col, **_LEIDEN, random_state=seed)
    if len(res) > 1:
        adata.obs[key_added] = adata.obs[keys[0]].copy()
    umap_cells = adata.n_obs
    if umap:
        umap_cells = _umap(adata, use_rep, n_neighbors, seed, umap_max_cells)
    params = _record_clustering(
        adata,
        use_rep=use_rep,
        n_neighbors=n_neighbors,
        res=res,
        keys=keys,
        key=key_added,
        seed=seed,
        umap=umap,
        umap_cells=umap_cells,
    )
    logger.info(
        "cluster on obsm[%r]: added obsp['distances', 'connectivities'], uns['neighbors'], "
        "%s%s, uns['scvae']['cluster']['params']",
        use_rep,
        _added_columns(params),
        ", obsm['X_umap']" if umap else "",
    )
    return adata if copy else None


def _umap(
    adata: ad.AnnData, use_rep: str, n_neighbors: int, seed: int, max_cells: int | None
) -> int:
    """``obsm["X_umap"]`` on all cells, or on a random subsample above ``max_cells``."""
    if max_cells is None or adata.n_obs <= max_cells:
        sc.tl.umap(adata, random_state=seed)
        return adata.n_obs
    rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
    sub = ad.AnnData(
        obs=pd.DataFrame(index=adata.obs_names[rows]),
        obsm={use_rep: np.asarray(adata.obsm[use_rep])[rows]},
    )
    sc.pp.neighbors(sub, n_neighbors=n_neighbors, use_rep=use_rep, random_state=seed)
    sc.tl.umap(sub, random_state=seed)
    xy = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
    xy[rows] = sub.obsm["X_umap"]
    adata.obsm["X_umap"] = xy
    adata.uns["umap"] = sub.uns["umap"]
    logger.info("UMAP on %d random cells of %d (umap_max_cells)", max_cells, adata.n_obs)
    return max_cells


def _record_clustering(
    adata: ad.AnnData,
    *,
    use_rep: str,
    n_neighbors: int,
    res: list[float],
    keys: list[str],
    key: str,
    seed: int,
    umap: bool,
    umap_cells: int,
) -> dict:
    """Store the clustering's settings in ``uns["scvae"]["cluster"]["params"]``."""
    n_clusters = [int(adata.obs[col].nunique()) for col in keys]
    # A new clustering makes any earlier metrics stale, so the section is replaced.
    adata.uns.setdefault("scvae", {})["cluster"] = {}
    params = scvae_section(adata, "cluster")["params"] = {
        "use_rep": use_rep,
        "n_neighbors": int(n_neighbors),
        "resolutions": res,
        "keys": keys,
        "key": key,
        "n_clusters": n_clusters,
        "seed": int(seed),
        "umap": bool(umap),
        "umap_cells": int(umap_cells) if umap else 0,
        "leiden_flavor": _LEIDEN["flavor"],
        "leiden_n_iterations": _LEIDEN["n_iterations"],
    }
    return params


def _added_columns(params: dict) -> str:
    """The ``obs`` columns :func:`cluster` added, for its log line."""
    res, keys, key = params["resolutions"], params["keys"], params["key"]
    n_clusters = params["n_clusters"]
    added = ", ".join(
        f"obs[{col!r}] ({n} clusters at resolution {r:g})"
        for col, n, r in zip(keys, n_clusters, res, strict=True)
    )
    if len(res) > 1:
        added += f", obs[{key!r}] (= obs[{keys[0]!r}])"
    return added


def leiden_labels(
    X: np.ndarray, *, resolution: float = 1.0, n_neighbors: int = 15, seed: int = 0
) -> np.ndarray:
    """Leiden clusters of an embedding, with the same graph and settings as :func:`cluster`.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    resolution
        Leiden resolution.
    n_neighbors
        Neighbours per cell in the kNN graph (clamped to ``n_cells - 1``).
    seed
        Seed for the neighbour search and Leiden.

    Returns
    -------
    numpy.ndarray
        Cluster id per cell, as strings.
    """
    return leiden_clusterings(X, resolutions=[resolution], n_neighbors=n_neighbors, seed=seed)[
        resolution
    ]


def leiden_clusterings(
    X: np.ndarray, *, resolutions: Sequence[float], n_neighbors: int = 15, seed: int = 0
) -> dict[float, np.ndarray]:
    """Leiden clusters of an embedding at several resolutions, on one kNN graph.

    Parameters
    ----------
    X
        Embedding, cells x dimensions.
    resolutions
        Leiden resolutions.
    n_neighbors
        Neighbours per cell in the kNN graph (clamped to ``n_cells - 1``).
    seed
        Seed for the neighbour search and Leiden.

    Returns
    -------
    dict
        Resolution -> cluster id per cell, as strings.
    """
    tmp = ad.AnnData(obs=pd.DataFrame(index=np.arange(X.shape[0]).astype(str)))
    tmp.obsm["X"] = np.asarray(X, dtype=np.float32)
    n_neighbors = _check_n_neighbors(n_neighbors, tmp.n_obs)
    sc.pp.neighbors(tmp, n_neighbors=n_neighbors, use_rep="X", random_state=seed)
    out = {}
    for r in resolutions:
        sc.tl.leiden(tmp, resolution=r, **_LEIDEN, random_state=seed)
        out[r] = tmp.obs["leiden"].astype(str).to_numpy()
    return out
