"""Run files that hold what a run adds and refer to the file they extend for the rest.

A workflow run writes two h5ad files: ``latent.h5ad`` (training or baseline: the
embedding) and ``final.h5ad`` (cluster stage: clusters, UMAP, scores). Copying the
counts into each of them made results grow with every run (at 10^6 cells, 2 GB per
file). Instead a run file holds

- every ``obs`` column (labels, batch, QC, split, clusters: what a scanpy user colours
  by) and the ``var`` names;
- the ``obsm``, ``varm``, ``obsp`` and ``layers`` entries the run computed
  (``latent.h5ad``: ``X_scvae`` and ``X_scvae_scale`` or ``X_pca``;
  ``final.h5ad``: ``X_umap``, the kNN graph and, only with ``cluster: decoded: true``,
  the decoded expression);
- all of ``uns`` (settings, scores, markers, diagnostics);
- no ``X``,

and ``uns["scvae"]["extends"]`` names the file it extends, relative to its own folder
(``final.h5ad`` extends ``latent.h5ad``, which extends ``../../preprocessed.h5ad``), so
the results folder can be moved or copied whole. :func:`read_run` follows that chain
and returns the AnnData with everything attached: the counts in ``X`` and
``layers["counts"]``, the embedding, the clusters. :func:`write_run` writes a run file.

The decoded expression needs the run's model, which this layer below the model cannot
load: ``scvae.read_run(path, decoded=True)`` (:func:`scvae.decode.read_run`) computes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
from anndata.io import read_elem

from scvae.data.checks import require_exists
from scvae.data.h5ad import plain_dicts, read_h5ad
from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = ["EXTENDS_KEY", "MAPPINGS", "read_run", "write_run"]

logger = logging.getLogger(__name__)

EXTENDS_KEY = "extends"
"""Key in ``uns["scvae"]`` of the file a run file extends (a path relative to its folder)."""

MAPPINGS = ("obsm", "varm", "obsp", "layers")
"""The AnnData mappings of which a run file stores the entries its run computed."""

# gzip, the filter every HDF5 reader has: run files are mostly float embeddings and
# strings, which it shrinks by a fifth to a half; reading stays fast.
_COMPRESSION = "gzip"


def _extended(path: Path) -> Path | None:
    """The file that ``path`` extends (``uns["scvae"]["extends"]``); None for a full file."""
    require_exists(path)
    try:
        with h5py.File(path, "r") as f:
            scvae = f.get("uns/scvae")
            if not isinstance(scvae, h5py.Group) or EXTENDS_KEY not in scvae:
                return None
            rel = read_elem(scvae[EXTENDS_KEY])
    except OSError:
        return None  # not HDF5: read_h5ad says so, naming the file
    return path.parent / str(rel)


def write_run(
    adata: anndata.AnnData,
    path: str | os.PathLike,
    *,
    extends: str | os.PathLike,
    obsm: Sequence[str] = (),
    varm: Sequence[str] = (),
    obsp: Sequence[str] = (),
    layers: Sequence[str] = (),
) -> None:
    """Write the part of ``adata`` that a run adds to the file ``extends`` (atomically).

    Written: ``obs`` (every column), the ``var`` names, ``uns`` (with
    ``uns["scvae"]["extends"]``, the path of ``extends`` relative to the folder of
    ``path``), and the entries of ``obsm``, ``varm``, ``obsp`` and ``layers`` named
    (those the run computed). Not written: ``X`` and every other entry, which the
    extended files hold; :func:`read_run` attaches them again.

    Parameters
    ----------
    adata
        The run's cells, the same (in the same order) as those of ``extends``.
    path
        Destination ``.h5ad`` file.
    extends
        The h5ad file the run started from (``preprocessed.h5ad`` or a run file).
    obsm, varm, obsp, layers
        Keys of the entries the run added (or replaced); each must be in ``adata``.

    Raises
    ------
    InputError
        When ``extends`` is missing or has other cells than ``adata``.
    """
    path, extends = Path(path), Path(extends)
    require_exists(extends)
    with h5py.File(extends, "r") as f:
        n_base = _n_obs(f)
    if n_base != adata.n_obs:
        raise InputError(
            f"{path}: a run of {adata.n_obs} cells cannot extend {extends} ({n_base} cells)"
        )
    added = {"obsm": obsm, "varm": varm, "obsp": obsp, "layers": layers}
    uns = plain_dicts(dict(adata.uns))
    scvae = dict(uns.get("scvae", {}))
    scvae[EXTENDS_KEY] = os.path.relpath(extends.resolve(), path.resolve().parent)
    uns["scvae"] = scvae
    run = anndata.AnnData(
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=adata.var_names.copy()),
        uns=uns,
    )
    for m, keys in added.items():
        for key in keys:
            getattr(run, m)[key] = getattr(adata, m)[key]
    with atomic_path(path) as tmp:
        run.write_h5ad(tmp, compression=_COMPRESSION)
    stored = {m: sorted(getattr(run, m)) for m in MAPPINGS if len(getattr(run, m))}
    logger.info("Wrote %s (%d cells; extends %s; holds %s)", path, run.n_obs, extends, stored)


def _n_obs(f: h5py.File) -> int:
    """Number of cells of an open h5ad file (from its obs index)."""
    obs = f["obs"]
    index = obs.attrs.get("_index", "_index")
    return int(obs[index].shape[0])


def read_run(path: str | os.PathLike, *, backed: bool | None = None) -> anndata.AnnData:
    """Open a run file with everything attached: counts, embedding, clusters.

    Follows ``uns["scvae"]["extends"]`` from ``path`` down to the preprocessed file and
    lays each file over the one it extends: its ``obs`` and ``var`` columns, its
    ``obsm``, ``varm``, ``obsp`` and ``layers`` entries and its ``uns`` (the
    ``uns["scvae"]`` sections merged) win over those below. The result is what the
    run's file held when it carried its own copy of the counts: ``X`` and
    ``layers["counts"]`` are the preprocessed counts. A file that extends nothing (a
    full h5ad) is read as it is.

    Parameters
    ----------
    path
        A run file (``final.h5ad`` or ``latent.h5ad`` of ``results/<dataset>/<run>/
        seed<k>/``), or any h5ad.
    backed
        How to read the preprocessed file, as :func:`scvae.data.h5ad.read_h5ad` does:
        None (default) leaves the counts on disk when the file is at least 1 GiB.

    Returns
    -------
    anndata.AnnData
        Everything, ready for scanpy (``sc.tl.rank_genes_groups(adata, "scvae_leiden")``
        or ``sc.pl.umap(adata, color=["scvae_leiden", "CD3E"])``). Writing it with
        :func:`scvae.data.h5ad.write_h5ad` gives a self-contained file (``scvae export``).
        No decoded expression unless the run stored it (``cluster: decoded: true``):
        ``scvae.read_run(path, decoded=True)`` (:func:`scvae.decode.read_run`) computes
        it from the run's model.

    Raises
    ------
    InputError
        When a file of the chain is missing or corrupt, or does not have the cells or the
        genes of the file it extends (it was rewritten after the run: rerun the workflow).
    """
    path = Path(path)
    base_path = _extended(path)
    if base_path is None:
        return read_h5ad(path, backed=backed)
    top = read_h5ad(path)  # a run file: small, in memory
    base = read_run(base_path, backed=backed)
    _check_same_cells(top, base, path, base_path)
    _lay_over(base, top)
    base.uns["scvae"].pop(EXTENDS_KEY, None)
    return base


def _check_same_cells(
    top: anndata.AnnData, base: anndata.AnnData, path: Path, base_path: Path
) -> None:
    for axis, a, b in (
        ("cells", top.obs_names, base.obs_names),
        ("genes", top.var_names, base.var_names),
    ):
        if len(a) != len(b) or not np.array_equal(np.asarray(a), np.asarray(b)):
            raise InputError(
                f"{path}: its {axis} ({len(a)}) are not those of {base_path} ({len(b)}), "
                f"the file it extends; {base_path} was rewritten after this run. Rerun the "
                "workflow (snakemake reruns what depends on it)."
            )


def _lay_over(base: anndata.AnnData, top: anndata.AnnData) -> None:
    """Put what ``top`` holds over ``base``, in place."""
    for col in top.obs.columns:
        base.obs[col] = top.obs[col].values
    for col in top.var.columns:
        base.var[col] = top.var[col].values
    for m in MAPPINGS:
        target = getattr(base, m)
        for key, value in getattr(top, m).items():
            target[key] = value
    for key, value in top.uns.items():
        if key == "scvae" and isinstance(value, Mapping):
            merged: dict[str, Any] = dict(base.uns.get("scvae", {}))
            merged.update(value)
            base.uns["scvae"] = merged
        else:
            base.uns[key] = value
