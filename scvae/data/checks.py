"""Input checks whose messages name the file: it exists, it opens, it holds raw counts.

Every reader (:mod:`scvae.data.readers`, :mod:`scvae.data.h5ad`) and every stage that
reads counts from disk (:func:`check_counts_chunked`) raises
:class:`scvae.errors.InputError` through these checks, so that the same problem gets the
same message whatever the format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import sparse

from scvae.data.ondisk import is_ondisk, row_chunks
from scvae.errors import InputError

__all__ = [
    "check_counts",
    "check_counts_chunked",
    "corrupt_file_error",
    "open_h5",
    "require_exists",
]

# Values checked per pass in check_counts: bounds the temporaries on huge matrices.
_CHECK_CHUNK = 1 << 24


# ----------------------------------------------------------------------------- files


def require_exists(path: Path) -> None:
    """Raise a clear error when ``path`` does not exist.

    Parameters
    ----------
    path
        An input file or folder.

    Raises
    ------
    InputError
        If the path does not exist.
    """
    if not path.exists():
        raise InputError(
            f"{path}: input does not exist; check the path (a relative path starts from "
            "the working directory)."
        )


def corrupt_file_error(path: Path, err: BaseException, what: str) -> InputError:
    """The error for a file that could not be read as ``what`` (truncated or corrupt).

    Parameters
    ----------
    path
        The file.
    err
        The error its reader raised; its type and message are quoted.
    what
        What the file was read as (``"HDF5"``, ``"h5ad"``, ``"loom"``, ...).

    Returns
    -------
    InputError
        To raise ``from err``.
    """
    return InputError(
        f"{path}: could not be read as {what}; the file looks truncated or corrupt "
        f"({type(err).__name__}: {err}). Copy or download it again."
    )


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, with a clear error when it is corrupt.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    h5py.File
        The open file (close it, or use it as a context manager).

    Raises
    ------
    InputError
        If the file is not a readable HDF5 file.
    """
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise corrupt_file_error(path, err, "HDF5") from err


# ------------------------------------------------------------------------ raw counts


def check_counts(X: Any, *, source: str, hint: str | None = None) -> None:
    """Check that a matrix holds raw counts: finite, non-negative integers, non-empty.

    Only the stored values of a sparse matrix are inspected, so a large sparse
    matrix is never densified.

    Parameters
    ----------
    X
        Cells x genes matrix: a scipy sparse matrix or array, or a dense array.
    source
        What the matrix came from (usually the file path); every message names it.
    hint
        Extra advice appended to the message for non-integer values, such as the
        layers the input file offers.

    Raises
    ------
    InputError
        If the matrix is empty, or holds NaN, infinite, negative or non-integer
        values.
    """
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        raise InputError(
            f"{source}: the count matrix is empty ({n_cells} cells x {n_genes} genes); "
            "check that the file holds the data you expect."
        )
    # ravel(order="K") does not copy a contiguous array, whatever its memory order.
    data = np.ravel(X.data if sparse.issparse(X) else np.asarray(X), order="K")
    if data.dtype.kind not in "biuf":
        raise InputError(
            f"{source}: the count matrix has dtype {data.dtype}; expected numbers "
            "(raw integer counts)."
        )
    if data.dtype.kind != "f":
        _check_negative(data, source)
        return
    _check_finite(data, source)
    _check_negative(data, source)
    _check_integer(data, source, hint)


def check_counts_chunked(X: Any, *, source: str) -> None:
    """:func:`check_counts` on an on-disk matrix, one chunk of rows at a time.

    Parameters
    ----------
    X
        An in-memory matrix (checked whole) or an on-disk one
        (:func:`scvae.data.ondisk.is_ondisk`).
    source
        What the matrix came from; the messages of on-disk chunks add their rows.

    Raises
    ------
    InputError
        As :func:`check_counts`.
    """
    if not is_ondisk(X):
        check_counts(X, source=source)
        return
    if X.shape[0] == 0 or X.shape[1] == 0:
        check_counts(sparse.csr_matrix(X.shape, dtype=np.float32), source=source)
    for pos, block in row_chunks(X):
        check_counts(block, source=f"{source} (rows {pos[0]}-{pos[-1]})")


def _chunks(data: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, data.size, _CHECK_CHUNK):
        yield data[start : start + _CHECK_CHUNK]


def _check_finite(data: np.ndarray, source: str) -> None:
    n_bad = sum(int(np.count_nonzero(~np.isfinite(c))) for c in _chunks(data))
    if n_bad:
        raise InputError(
            f"{source}: the count matrix holds {n_bad} NaN or infinite value(s); raw "
            "counts must be finite. Check how the matrix was exported."
        )


def _check_negative(data: np.ndarray, source: str) -> None:
    n_neg = sum(int(np.count_nonzero(c < 0)) for c in _chunks(data))
    if n_neg:
        raise InputError(
            f"{source}: the count matrix holds {n_neg} negative value(s) (minimum "
            f"{data.min():g}); raw counts are never negative, so the data look scaled "
            "or batch-corrected. scvae expects raw integer counts."
        )


def _check_integer(data: np.ndarray, source: str, hint: str | None) -> None:
    n_frac = 0
    example = None
    for chunk in _chunks(data):
        frac = chunk != np.round(chunk)
        n = int(np.count_nonzero(frac))
        if n and example is None:
            example = float(chunk[np.argmax(frac)])
        n_frac += n
    if not n_frac:
        return
    msg = (
        f"{source}: the count matrix holds {n_frac} non-integer value(s) (for example "
        f"{example:.4g}), so it looks normalized or log-transformed. scvae models raw "
        "integer counts (UMI or read counts): pass the raw counts instead, for example "
        "the layer that holds them (layer='counts' reads adata.layers['counts'])."
    )
    if hint:
        msg += f" {hint}"
    raise InputError(msg)
