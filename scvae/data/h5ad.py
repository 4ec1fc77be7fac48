"""h5ad files between the workflow's stages: read (in memory or backed) and write atomically.

A large file is read *backed* (its count matrices stay on disk) and written back by
copying it and replacing what is in memory, so that no stage loads the counts of an atlas.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata
import h5py
from anndata.abc import CSRDataset
from anndata.io import read_elem, sparse_dataset, write_elem
from scipy import sparse

from scvae.data.checks import corrupt_file_error, require_exists
from scvae.data.ondisk import backed_min_bytes
from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = ["plain_dicts", "read_h5ad", "write_h5ad"]

logger = logging.getLogger(__name__)


def read_h5ad(path: str | os.PathLike, *, backed: bool | None = False) -> anndata.AnnData:
    """Read an h5ad file, with a clear error when it is missing or corrupt.

    Parameters
    ----------
    path
        The ``.h5ad`` file (for example an output of an earlier workflow stage).
    backed
        False: read everything into memory. True: leave the count matrices on disk --
        ``X`` and every CSR layer stay in the file (anndata ``CSRDataset``s, which
        :func:`scvae.data.loaders.counts_matrix` reads as :class:`scvae.data.ondisk.H5CSR`),
        the rest (obs, var, obsm, obsp, uns, other layers) is read; memory then does not
        grow with the counts (anndata's own ``backed="r"`` reads every layer). None:
        backed when the file is at least :func:`scvae.data.ondisk.backed_min_bytes`
        (1 GiB, or ``SCVAE_BACKED_MIN_GB``). :func:`write_h5ad` writes a backed AnnData
        by copying the file and replacing what is in memory.

    Returns
    -------
    anndata.AnnData
        Everything the file holds (layers, obsm, uns).
    """
    path = Path(path)
    require_exists(path)
    if backed is None:
        backed = path.stat().st_size >= backed_min_bytes()
    try:
        if backed:
            return _read_h5ad_backed(path)
        return anndata.read_h5ad(path)
    except OSError as err:
        raise corrupt_file_error(path, err, "h5ad") from err
    except Exception as err:
        raise InputError(
            f"{path}: could not be read as h5ad ({type(err).__name__}: {err}); the file "
            "looks truncated or corrupt, or was written by an incompatible tool."
        ) from err


def _read_h5ad_backed(path: Path) -> anndata.AnnData:
    with h5py.File(path, "r") as f:
        elems = {
            k: read_elem(f[k])
            for k in ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")
            if k in f
        }
        layer_keys = list(f["layers"]) if "layers" in f else []
    adata = anndata.AnnData(filename=path, filemode="r", **elems)
    for key in layer_keys:
        group = adata.file[f"layers/{key}"]
        csr = isinstance(group, h5py.Group) and group.attrs.get("encoding-type") == "csr_matrix"
        adata.layers[key] = sparse_dataset(group) if csr else read_elem(group)
    logger.info("Opened %s backed: %d cells x %d genes stay on disk", path, *adata.shape)
    return adata


def write_h5ad(adata: anndata.AnnData, path: str | os.PathLike) -> None:
    """Write ``adata`` to an h5ad file atomically (no partial file on failure).

    Parameters
    ----------
    adata
        Data to write; a backed AnnData (:func:`read_h5ad` ``backed=True``) is written
        without loading its counts. When ``layers["counts"]`` equals ``X`` (a CSR
        matrix), it is stored once, ``layers/counts`` a hard link to ``X``.
    path
        Destination ``.h5ad`` file; its folder is created if needed.
    """
    with atomic_path(path) as tmp:
        if adata.isbacked:
            _write_backed(adata, tmp)
        else:
            _write_in_memory(adata, tmp)
    logger.info("Wrote %d cells x %d genes to %s", *adata.shape, path)


def _write_in_memory(adata: anndata.AnnData, tmp: Path) -> None:
    """Write with anndata, ``layers["counts"]`` a hard link to ``X`` when they are equal.

    The preprocessed file holds the raw counts in both places (scverse convention); on
    disk they are then stored once, as the streamed preprocessing writes them.
    """
    counts = adata.layers.get("counts")
    if counts is None or not _same_csr(counts, adata.X):
        adata.write_h5ad(tmp)
        return
    del adata.layers["counts"]
    try:
        adata.write_h5ad(tmp)
    finally:
        adata.layers["counts"] = counts
    with h5py.File(tmp, "r+") as f:
        f.require_group("layers")["counts"] = f["X"]


def _same_csr(a: Any, b: Any) -> bool:
    """Whether two in-memory CSR matrices have the same shape, dtype and values."""
    if not (sparse.isspmatrix_csr(a) and sparse.isspmatrix_csr(b)):
        return False
    return a.shape == b.shape and a.dtype == b.dtype and (a != b).nnz == 0


def plain_dicts(value: Any) -> Any:
    """Mappings (OrderedDict, anndata's AxisArrays) as plain dicts, as anndata writes them.

    Parameters
    ----------
    value
        A mapping (converted recursively) or any other value (returned as it is).

    Returns
    -------
    Any
        ``value`` with every nested mapping a ``dict``, ready for ``anndata.io.write_elem``.
    """
    if isinstance(value, Mapping):
        return {k: plain_dicts(v) for k, v in value.items()}
    return value


def _write_backed(adata: anndata.AnnData, tmp: Path) -> None:
    """Write a backed AnnData (:func:`read_h5ad` ``backed=True``) without loading its counts.

    The source file is copied (X and the on-disk layers go along byte for byte), then
    obs, var, obsm, varm, obsp, varp and uns are replaced with what is in memory and
    layers that are not in the file are added.
    """
    source = Path(adata.filename)
    shutil.copyfile(source, tmp)
    with h5py.File(tmp, "r+") as f:
        for key in ("obs", "var", "obsm", "varm", "obsp", "varp", "uns"):
            if key in f:
                del f[key]
            value = getattr(adata, key)
            write_elem(f, key, value if key in ("obs", "var") else plain_dicts(value))
        layers = f.require_group("layers")
        for key in list(layers):
            kept = adata.layers.get(key)
            same = isinstance(kept, CSRDataset) and Path(kept.group.file.filename) == source
            if not same:
                del layers[key]
        for key, value in adata.layers.items():
            if key not in layers:
                write_elem(layers, key, value)
