"""The input formats scvae reads, and their detection from a path's name and content."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from scvae.data.checks import open_h5, require_exists
from scvae.errors import InputError

__all__ = ["FORMATS", "TEXT_SUFFIXES", "detect_format"]

FORMATS = ("10x_h5", "10x_mtx", "h5ad", "loom", "csv", "xy_h5")
"""Input formats that :func:`scvae.data.readers.read_counts` understands."""

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None}
"""Extensions of delimited text (format ``"csv"``) and their delimiter (None: guessed)."""


def detect_format(path: str | os.PathLike) -> str:
    """Guess the input format of ``path`` from its type, extension and content.

    Parameters
    ----------
    path
        A file or a 10x matrix folder.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    InputError
        If the path does not exist or the format cannot be recognised.
    """
    path = Path(path)
    require_exists(path)
    if path.is_dir():
        return "10x_mtx"
    suffixes = [s.lower() for s in path.suffixes]
    last = suffixes[-1] if suffixes else ""
    if last == ".gz" and len(suffixes) > 1:
        last = suffixes[-2]
    if last == ".h5ad":
        return "h5ad"
    if last == ".loom":
        return "loom"
    if last in TEXT_SUFFIXES:
        return "csv"
    if last in (".h5", ".hdf5"):
        return _detect_h5_layout(path)
    raise InputError(
        f"{path}: unknown format (extension {''.join(path.suffixes) or 'none'!r}); "
        f"name it .h5ad, .loom, .h5, .csv/.tsv/.txt[.gz] or a 10x folder, or pass "
        f"format= one of {', '.join(FORMATS)}."
    )


def _detect_h5_layout(path: Path) -> str:
    with open_h5(path) as f:
        if _is_cellranger_v3(f) or _is_cellranger_v2(f):
            return "10x_h5"
        if isinstance(f.get("X"), h5py.Dataset):
            return "xy_h5"
        keys = ", ".join(sorted(f.keys())) or "none"
    raise InputError(
        f"{path}: unknown format: an HDF5 file that is neither a Cell Ranger matrix "
        f"(group 'matrix') nor an X/Y file (dataset 'X'); top-level keys: {keys}."
    )


def _is_cellranger_v3(f: h5py.File) -> bool:
    group = f.get("matrix")
    needed = ("data", "indices", "indptr", "shape", "features")
    return isinstance(group, h5py.Group) and all(k in group for k in needed)


def _is_cellranger_v2(f: h5py.File) -> bool:
    # Cell Ranger v2 stores one group per genome, each with a 'genes' dataset.
    return any(isinstance(g, h5py.Group) and "genes" in g and "data" in g for g in f.values())
