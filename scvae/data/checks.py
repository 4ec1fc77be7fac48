"""Input checks whose messages name the file: it exists, it opens, it holds raw counts.

Every reader (:mod:`scvae.data.readers`, :mod:`scvae.data.h5ad`) and every stage that
reads counts from disk (:func:`check_counts_chunked`) raises
:class:`scvae.errors.InputError` through these checks, so that the same problem gets the
same message whatever the format.

Counts that went through floating point (2.0000002 for 2) are rounded here, where they
are checked, and nowhere else: the check returns the counts to use (rounded in place
for a matrix just read, a rounded copy of someone else's, or, for a read-only file on
disk, a matrix that rounds the rows as it reads them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import sparse

from scvae.data.ondisk import Subset, is_ondisk, row_chunks
from scvae.errors import InputError

__all__ = [
    "LARGE_COUNT",
    "ROUND_RTOL",
    "ChunkedCountCheck",
    "check_counts",
    "check_counts_chunked",
    "corrupt_file_error",
    "open_h5",
    "require_exists",
]

logger = logging.getLogger(__name__)

# Values checked per piece in check_counts: bounds the temporaries on huge matrices.
_CHECK_CHUNK = 1 << 22


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

ROUND_RTOL = 1e-6
"""Values this close to an integer count as that integer (relative to it; absolute below 1).

Counts that went through floating point (a float32 export, or normalized and scaled
back) sit a few float32 steps (each 1.2e-7 relative) from their integer: such values are
rounded, with one warning that says how many. Anything further off is rejected.
"""

LARGE_COUNT = 10**7
"""A single count above this gets a warning naming its cell and gene.

float32, in which scvae holds counts, stores integers exactly only up to 2**24
(16,777,216), and one gene rarely gets that many UMIs or reads in one cell.
"""


def check_counts(
    X: Any,
    *,
    source: str,
    hint: str | None = None,
    obs_names: Sequence[str] | None = None,
    var_names: Sequence[str] | None = None,
    copy: bool = True,
) -> Any:
    """Check that a matrix holds raw counts: finite, non-negative integers, non-empty.

    Values within :data:`ROUND_RTOL` of an integer are counts that went through
    floating point: they are rounded, with one warning that says how many. Counts above
    :data:`LARGE_COUNT` get one warning naming the cell and gene of the largest. Only
    the stored values of a sparse matrix are inspected, so a large sparse matrix is
    never densified.

    Parameters
    ----------
    X
        Cells x genes matrix: a scipy sparse matrix or array, or a dense array.
    source
        What the matrix came from (usually the file path); every message names it.
    hint
        Extra advice appended to the message for non-integer values, such as the
        layers the input file offers.
    obs_names, var_names
        Names of the cells and genes, for the messages; None names them by row and
        column index.
    copy
        When values need rounding, round a copy and leave ``X`` as it is; False rounds
        ``X`` in place (for a matrix the caller has just read) unless it is read-only.

    Returns
    -------
    Any
        The counts to use: ``X`` itself when every value is an integer; else the
        rounded copy, or ``X`` rounded in place (a sparse format other than CSR, CSC or
        COO comes back as the rounded CSR matrix).

    Raises
    ------
    InputError
        If the matrix is empty, or holds NaN, infinite, negative or non-integer
        values.
    """
    _check_not_empty(X.shape, source)
    check = ChunkedCountCheck(source, hint=hint, obs_names=obs_names, var_names=var_names)
    flat, values = _flat_values(X)
    n_round = check._scan(flat, values)
    check.finish()
    if not n_round:
        return X
    # A dense flat is a view of X; a sparse one is X unless converted to CSR.
    in_x = flat is X or not sparse.issparse(flat)
    if in_x and (copy or not _writeable(flat)):
        flat, in_x = flat.copy(), False
    _round_in_place(flat)
    # A dense X rounded in place keeps its own type (np.matrix stays np.matrix).
    return X if in_x else flat


def check_counts_chunked(
    X: Any,
    *,
    source: str,
    hint: str | None = None,
    obs_names: Sequence[str] | None = None,
    var_names: Sequence[str] | None = None,
    copy: bool = True,
) -> Any:
    """:func:`check_counts` on an on-disk matrix, one chunk of rows at a time.

    Parameters
    ----------
    X
        An in-memory matrix (checked whole, as :func:`check_counts`) or an on-disk one
        (:func:`scvae.data.ondisk.is_ondisk`).
    source
        What the matrix came from; the errors about on-disk chunks add their rows.
    hint, obs_names, var_names, copy
        As :func:`check_counts`; an on-disk matrix is never changed.

    Returns
    -------
    Any
        The counts to use: ``X`` itself when every value is an integer; else, in
        memory, as :func:`check_counts`, and on disk a matrix that reads the rows of
        ``X`` and rounds them as it reads (the file is read-only), so that every
        minibatch drawn from it holds integers.

    Raises
    ------
    InputError
        As :func:`check_counts`.
    """
    if not is_ondisk(X):
        return check_counts(
            X, source=source, hint=hint, obs_names=obs_names, var_names=var_names, copy=copy
        )
    _check_not_empty(X.shape, source)
    check = ChunkedCountCheck(source, hint=hint, obs_names=obs_names, var_names=var_names)
    for rows, block in row_chunks(X):
        check.chunk(block, rows)
    check.finish()
    return check.counts(X)


class ChunkedCountCheck:
    """The checks of :func:`check_counts` on a matrix read chunk by chunk, warning once.

    For stages that read the counts in chunks of rows anyway (the streamed
    preprocessing): each chunk is checked, and rounded, as it is read; :meth:`finish`
    then gives the warnings for the whole matrix.

    Parameters
    ----------
    source
        What the matrix came from; every message names it.
    hint
        Extra advice appended to the message for non-integer values.
    obs_names, var_names
        Names of the rows and columns of the whole matrix, for the messages; None names
        them by index.
    """

    def __init__(
        self,
        source: str,
        *,
        hint: str | None = None,
        obs_names: Sequence[str] | None = None,
        var_names: Sequence[str] | None = None,
    ) -> None:
        self.source = source
        self.hint = hint
        self.obs_names = obs_names
        self.var_names = var_names
        self.n_rounded = 0
        self.n_large = 0
        self._rounded_example: str | None = None
        self._largest: tuple[float, str] | None = None  # (value, its cell and gene)
        self._finished = False

    def chunk(self, block: Any, rows: np.ndarray | None = None) -> Any:
        """Check one chunk of rows and round its near-integer values in place.

        Parameters
        ----------
        block
            The chunk, freshly read (it is changed in place).
        rows
            Row of the whole matrix of each row of ``block``; None: ``block`` is the
            whole matrix.

        Returns
        -------
        Any
            ``block``, rounded (a sparse format other than CSR, CSC or COO comes back
            as CSR).

        Raises
        ------
        InputError
            As :func:`check_counts`; the message names the rows of the chunk.
        """
        flat, values = _flat_values(block)
        if self._scan(flat, values, rows):
            _round_in_place(flat)
        return flat

    def _scan(self, flat: Any, values: np.ndarray, rows: np.ndarray | None = None) -> int:
        """Check the values of one chunk without changing them.

        Parameters
        ----------
        flat
            The chunk, as CSR, CSC, COO or a dense ndarray.
        values
            Its values as one flat array (the stored values of a sparse matrix).
        rows
            As in :meth:`chunk`.

        Returns
        -------
        int
            How many values need rounding.

        Raises
        ------
        InputError
            As :func:`check_counts`.
        """
        source = self.source
        if rows is not None and len(rows):
            source = f"{source} (rows {rows[0]}-{rows[-1]})"
        kind = values.dtype.kind
        if kind not in "biuf":
            raise InputError(
                f"{source}: the count matrix has dtype {values.dtype}; expected numbers "
                "(raw integer counts)."
            )
        if kind == "b":
            return 0
        counts = _count_values(values)
        if counts.nonfinite:
            raise InputError(
                f"{source}: the count matrix holds {counts.nonfinite} NaN or infinite "
                "value(s); raw counts must be finite. Check how the matrix was exported."
            )
        if counts.negative:
            raise InputError(
                f"{source}: the count matrix holds {counts.negative} negative value(s) "
                f"(minimum {_show(values.min())}); raw counts are never negative, so the "
                "data look scaled or batch-corrected. scvae expects raw integer counts."
            )
        if counts.fractional:
            k = counts.first_fractional
            msg = (
                f"{source}: the count matrix holds {counts.fractional} non-integer value(s) "
                f"(for example {_show(values[k])} in {self._where(flat, k, rows)}), so it "
                "looks normalized or log-transformed. scvae models raw integer counts (UMI "
                "or read counts): pass the raw counts instead, for example the layer that "
                "holds them (layer='counts' reads adata.layers['counts'])."
            )
            if self.hint:
                msg += f" {self.hint}"
            raise InputError(msg)
        if counts.rounded:
            self.n_rounded += counts.rounded
            if self._rounded_example is None:
                self._rounded_example = _show(values[counts.first_rounded])
        if counts.large:
            self.n_large += counts.large
            k = int(np.argmax(values))
            value = float(values[k])
            if self._largest is None or value > self._largest[0]:
                self._largest = (value, self._where(flat, k, rows))
        return counts.rounded

    def finish(self) -> bool:
        """Give the warnings for everything checked (once); whether values were rounded.

        Returns
        -------
        bool
            True when some values were rounded: reads of the matrix must round too.
        """
        if not self._finished:
            self._finished = True
            if self.n_rounded:
                _warn(
                    f"{self.source}: rounded {self.n_rounded} value(s) that were within "
                    f"float rounding of an integer (relative difference up to {ROUND_RTOL:g}, "
                    f"for example {self._rounded_example}); the counts went through "
                    "floating point (a float32 export, or scaled and scaled back)."
                )
            if self._largest is not None:
                value, where = self._largest
                _warn(
                    f"{self.source}: {self.n_large} count(s) above {LARGE_COUNT:,}, the "
                    f"largest {value:,.0f} in {where}. One gene rarely gets that many UMIs "
                    "or reads in one cell: check that the rows are cells (not sums over "
                    "cells) and the values unscaled counts. float32, in which scvae holds "
                    "counts, stores integers exactly only up to 16,777,216."
                )
        return self.n_rounded > 0

    def counts(self, X: Any) -> Any:
        """The on-disk matrix that was checked, as it must be read from now on.

        Parameters
        ----------
        X
            The on-disk matrix whose chunks were checked.

        Returns
        -------
        Any
            ``X`` itself when no value was rounded; else a matrix that reads the rows
            of ``X`` and rounds them as it reads them (the file is left as it is).
        """
        return _RoundedRows(X) if self.n_rounded else X

    def _where(self, flat: Any, k: int, rows: np.ndarray | None) -> str:
        """The cell and gene of the ``k``-th value of ``flat``, by name where known."""
        row, col = _locate(flat, k)
        if rows is not None:
            row = int(rows[row])
        cell = f"row {row}" if self.obs_names is None else f"cell {str(self.obs_names[row])!r}"
        gene = f"column {col}" if self.var_names is None else f"gene {str(self.var_names[col])!r}"
        return f"{cell}, {gene}"


class _RoundedRows(Subset):
    """An on-disk matrix whose reads come back rounded (:func:`check_counts_chunked`)."""

    def __init__(self, X: Any) -> None:
        super().__init__(X)
        if hasattr(X, "nnz"):  # training records it with the run
            self.nnz = X.nnz

    def __repr__(self) -> str:
        return f"rounded({self.X!r})"

    def __getitem__(self, key: Any) -> sparse.csr_matrix:
        block = super().__getitem__(key)  # a fresh matrix: rounding it changes no file
        _round_in_place(block)
        return block


def _check_not_empty(shape: tuple[int, ...], source: str) -> None:
    n_cells, n_genes = shape
    if n_cells == 0 or n_genes == 0:
        raise InputError(
            f"{source}: the count matrix is empty ({n_cells} cells x {n_genes} genes); "
            "check that the file holds the data you expect."
        )


def _flat_values(X: Any) -> tuple[Any, np.ndarray]:
    """``X`` as CSR, CSC, COO or a dense ndarray, and its values as one flat array.

    The flat array is a view where it can be (a copy only for a dense array that is
    neither C- nor F-contiguous).
    """
    if sparse.issparse(X):
        if X.format not in ("csr", "csc", "coo"):
            X = X.tocsr()
        return X, np.ravel(X.data)
    A = np.asarray(X)
    return A, np.ravel(A, order=_dense_order(A))


def _dense_order(A: np.ndarray) -> str:
    return "F" if A.flags.f_contiguous and not A.flags.c_contiguous else "C"


def _locate(flat: Any, k: int) -> tuple[int, int]:
    """Row and column of the ``k``-th value of :func:`_flat_values`'s array."""
    if not sparse.issparse(flat):
        row, col = np.unravel_index(k, flat.shape, order=_dense_order(flat))
        return int(row), int(col)
    if flat.format == "coo":
        return int(flat.row[k]), int(flat.col[k])
    major = int(np.searchsorted(flat.indptr, k, side="right")) - 1
    minor = int(flat.indices[k])
    return (major, minor) if flat.format == "csr" else (minor, major)


def _writeable(flat: Any) -> bool:
    return bool((flat.data if sparse.issparse(flat) else flat).flags.writeable)


def _round_in_place(flat: Any) -> None:
    """Round the values of a CSR, CSC, COO or dense float matrix in place."""
    values = flat.data if sparse.issparse(flat) else flat
    np.round(values, out=values)
    # -1e-9 rounds to -0.0; adding +0.0 makes it 0.0, which prints and stores as zero.
    np.add(values, 0.0, out=values)
    if sparse.issparse(flat):
        flat.eliminate_zeros()  # a tiny value rounded to 0 is no detection


@dataclass
class _Counts:
    """How many values of a chunk are of each kind (and where the first ones are)."""

    nonfinite: int = 0
    negative: int = 0
    fractional: int = 0  # further than ROUND_RTOL from an integer
    rounded: int = 0  # within ROUND_RTOL of an integer, but not one
    large: int = 0
    first_fractional: int = -1
    first_rounded: int = -1


def _count_values(values: np.ndarray) -> _Counts:
    """One pass over ``values``, in pieces of :data:`_CHECK_CHUNK` to bound temporaries."""
    counts = _Counts()
    is_float = values.dtype.kind == "f"
    for start in range(0, values.size, _CHECK_CHUNK):
        c = values[start : start + _CHECK_CHUNK]
        counts.large += int(np.count_nonzero(c > LARGE_COUNT))
        if not is_float:
            counts.negative += int(np.count_nonzero(c < 0))
            continue
        finite = np.isfinite(c)
        if not finite.all():  # an error: the other counts do not matter
            counts.nonfinite += int(np.count_nonzero(~finite))
            continue
        # Values that round to 0 from below (-1e-9) are zeros, not negative counts.
        counts.negative += int(np.count_nonzero(c < -ROUND_RTOL))
        nearest = np.round(c)
        off = np.flatnonzero(c != nearest)
        if not off.size:  # integers, the usual case: no tolerance to work out
            continue
        nearest = nearest[off]
        fractional = np.abs(c[off] - nearest) > ROUND_RTOL * np.maximum(np.abs(nearest), 1)
        n_fractional = int(np.count_nonzero(fractional))
        if n_fractional and counts.first_fractional < 0:
            counts.first_fractional = start + int(off[np.argmax(fractional)])
        if n_fractional < off.size and counts.first_rounded < 0:
            counts.first_rounded = start + int(off[np.argmin(fractional)])
        counts.fractional += n_fractional
        counts.rounded += off.size - n_fractional
    return counts


def _show(value: Any) -> str:
    """A value with the digits that tell it apart in its own dtype (2.0000002, not 2)."""
    return str(value.item() if value.dtype.kind in "iub" else value)


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)
