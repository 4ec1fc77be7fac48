"""Count matrices that stay on disk: row-sliceable CSR over an h5ad file (h5py).

A single-cell atlas of 10^6-10^7 cells does not have to fit in memory to be trained on:
every stage of scvae reads counts a minibatch (or a chunk of rows) at a time, and
:class:`H5CSR` gives them rows of the CSR matrix stored in an h5ad file without loading
it. Only ``indptr`` (8 bytes per cell) is held in memory; ``data`` and ``indices`` are
read per request, one contiguous HDF5 read per run of consecutive rows.

Random rows are slow to read from disk (one read per row), so on-disk training draws
its minibatches by *block shuffle* (:class:`scvae.data.loaders.CountBatches` with
``block_size``): blocks of consecutive rows are visited in random order, a window of
several blocks is read at once, and the rows of the window are shuffled before being
cut into minibatches. See :class:`~scvae.data.loaders.CountBatches` for the trade-off.

The helpers :func:`row_chunks`, :func:`row_sums` and :func:`take_rows` (and
:func:`scvae.data.checks.check_counts_chunked`) work the same on in-memory scipy matrices
and on :class:`H5CSR`, so the code that uses them does not branch on where the data live.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import sparse

__all__ = [
    "BACKED_MIN_BYTES_DEFAULT",
    "CSRWriter",
    "H5CSR",
    "Subset",
    "backed_min_bytes",
    "is_ondisk",
    "row_chunks",
    "row_sums",
    "take_columns",
    "take_rows",
]

BACKED_MIN_BYTES_DEFAULT = 1 << 30
"""h5ad files at least this large (1 GiB) are read backed by default.

About 500,000 cells x 2,000 genes of 10x data. On disk, training runs as fast as in
memory and preprocessing is streamed; in memory, preprocessing holds about 5 times the
matrix (benchmarks/README.md), which the million-cell workflow could not afford.

Overridden by the environment variable ``SCVAE_BACKED_MIN_GB`` (a number of GiB; 0
reads every h5ad backed, ``inf`` none); Snakemake passes it on to the jobs.
"""
# Stored values per chunk of the chunked passes (row_chunks): 64 MB of float32 + int32.
CHUNK_NNZ = 1 << 23
# Rows separated by fewer stored values than this are read in one HDF5 read with the
# rows between them (then dropped): one read costs about as much as copying 32k values.
MAX_GAP_NNZ = 1 << 15


def backed_min_bytes(value: float | None = None) -> float:
    """Size in bytes from which h5ad inputs are read backed.

    Parameters
    ----------
    value
        GiB; None reads ``SCVAE_BACKED_MIN_GB`` from the environment, else the default.

    Returns
    -------
    float
        Bytes (may be ``inf``).
    """
    if value is None:
        env = os.environ.get("SCVAE_BACKED_MIN_GB")
        if not env:
            return float(BACKED_MIN_BYTES_DEFAULT)
        value = float(env)
    return float(value) * (1 << 30)


class H5CSR:
    """A CSR matrix in an HDF5 group (anndata's ``csr_matrix`` encoding), read on demand.

    Supports what scvae needs of a count matrix: ``shape``, ``dtype``, ``nnz`` and row
    indexing with a slice or an integer array (any order) returning a
    :class:`scipy.sparse.csr_matrix`.

    Parameters
    ----------
    group
        The h5py group with ``data``, ``indices``, ``indptr`` and a ``shape`` attribute.
    """

    format = "csr"

    def __init__(self, group: h5py.Group) -> None:
        encoding = group.attrs.get("encoding-type", "")
        if isinstance(encoding, bytes):
            encoding = encoding.decode()
        if encoding != "csr_matrix":
            raise ValueError(
                f"{group.file.filename}:{group.name} is stored as {encoding or 'dense'!r}, "
                "not as a CSR matrix (csr_matrix); only CSR counts can be read backed"
            )
        self.group = group
        self.shape = tuple(int(v) for v in group.attrs["shape"])
        self._data = group["data"]
        self._indices = group["indices"]
        self.indptr = np.asarray(group["indptr"][:], dtype=np.int64)
        self.dtype = self._data.dtype
        self.nnz = int(self.indptr[-1])

    @classmethod
    def open(cls, path: str | os.PathLike, key: str = "X") -> H5CSR:
        """Open ``key`` (``"X"`` or ``"layers/<name>"``) of an h5ad file read-only."""
        return cls(h5py.File(path, "r")[key])

    @property
    def filename(self) -> str:
        """The file the matrix lives in."""
        return self.group.file.filename

    def __repr__(self) -> str:
        return f"H5CSR({self.filename}:{self.group.name}, shape={self.shape}, nnz={self.nnz})"

    def _read_spans(self, starts: np.ndarray, stops: np.ndarray) -> sparse.csr_matrix:
        """Rows ``[starts[i], stops[i])`` of every span i, concatenated (one read per span)."""
        lo, hi = self.indptr[starts], self.indptr[stops]
        data = np.empty(int((hi - lo).sum()), dtype=self.dtype)
        indices = np.empty(data.size, dtype=self._indices.dtype)
        offset = 0
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            if b > a:
                dest = np.s_[offset : offset + b - a]
                self._data.read_direct(data, np.s_[a:b], dest)
                self._indices.read_direct(indices, np.s_[a:b], dest)
                offset += b - a
        counts = np.concatenate(
            [np.diff(self.indptr[a : b + 1]) for a, b in zip(starts, stops, strict=True)]
        )
        indptr = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return sparse.csr_matrix((data, indices, indptr), shape=(counts.size, self.shape[1]))

    def _read_sorted(self, rows: np.ndarray) -> sparse.csr_matrix:
        """Rows in increasing order (repeats allowed), one group of rows at a time.

        A group's rows lie within CHUNK_NNZ stored values of its first row, so that what
        is read at once (gaps included) stays bounded: 10% of the cells of a 10^6-cell
        file, spread over all of it, are read in ~30 groups, not as the whole file.
        """
        if rows.size == 0:
            return sparse.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        first, last = self.indptr[rows], self.indptr[rows + 1]
        parts, i = [], 0
        while i < rows.size:
            j = max(i + 1, int(np.searchsorted(last, first[i] + CHUNK_NNZ, side="right")))
            parts.append(self._read_group(rows[i:j]))
            i = j
        return parts[0] if len(parts) == 1 else sparse.vstack(parts, format="csr")

    def _read_group(self, rows: np.ndarray) -> sparse.csr_matrix:
        """Rows in increasing order, read in as few HDF5 reads as their gaps allow."""
        # Spans of rows read at once: consecutive rows, and rows separated by a gap of
        # fewer than MAX_GAP_NNZ stored values (reading the gap costs less than a read).
        ends = self.indptr[rows + 1]
        gaps = self.indptr[rows[1:]] - ends[:-1]
        breaks = np.flatnonzero(gaps > MAX_GAP_NNZ) + 1
        starts = rows[np.r_[0, breaks]]
        stops = rows[np.r_[breaks - 1, rows.size - 1]] + 1
        spans = self._read_spans(starts, stops)
        if spans.shape[0] == rows.size:
            return spans  # the rows were consecutive
        # Position of each wanted row among the rows read.
        span_len = stops - starts
        first = np.cumsum(np.r_[0, span_len[:-1]])
        span_of_row = np.repeat(np.arange(starts.size), np.diff(np.r_[0, breaks, rows.size]))
        pos = first[span_of_row] + rows - starts[span_of_row]
        return spans[pos]

    def __getitem__(self, key: Any) -> sparse.csr_matrix:
        if isinstance(key, tuple):
            if len(key) != 2 or key[1] != slice(None):
                raise IndexError("H5CSR supports row indexing only (X[rows] or X[rows, :])")
            key = key[0]
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._read_spans(np.array([start]), np.array([max(start, stop)]))
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).ravel()
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        if rows.size < 2 or not np.any(rows[1:] < rows[:-1]):
            return self._read_sorted(rows)
        order = np.argsort(rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return self._read_sorted(rows[order])[inverse]

    def close(self) -> None:
        """Close the file (the matrix is unusable afterwards)."""
        self.group.file.close()


class Subset:
    """Some rows and columns of a matrix, indexed like that submatrix, read on demand.

    ``Subset(X, rows, cols)[i]`` is ``X[rows[i]][:, cols]``; with increasing ``rows``
    and ``i``, reads stay in increasing order (what an on-disk matrix reads fastest).

    Parameters
    ----------
    X
        A row-sliceable matrix (:class:`H5CSR` or another :class:`Subset`).
    rows, cols
        Rows and columns kept (None: all).
    """

    format = "csr"

    def __init__(self, X: Any, rows: np.ndarray | None = None, cols: np.ndarray | None = None):
        self.X = X
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.cols = None if cols is None else np.asarray(cols, dtype=np.int64)
        self.shape = (
            X.shape[0] if rows is None else self.rows.size,
            X.shape[1] if cols is None else self.cols.size,
        )
        self.dtype = X.dtype
        base = X
        while isinstance(base, Subset):
            base = base.X
        # Stored values per row, for sizing chunks.
        self.nnz_per_row = base.nnz / max(base.shape[0], 1)

    def __getitem__(self, key: Any) -> sparse.csr_matrix:
        if isinstance(key, tuple):
            if len(key) != 2 or key[1] != slice(None):
                raise IndexError("Subset supports row indexing only (X[rows] or X[rows, :])")
            key = key[0]
        block = self.X[key if self.rows is None else self.rows[key]]
        return block if self.cols is None else block[:, self.cols]


def is_ondisk(X: Any) -> bool:
    """Whether ``X`` reads its rows from disk (:class:`H5CSR` or a subset of one)."""
    return isinstance(X, H5CSR | Subset)


def take_rows(X: Any, rows: np.ndarray) -> Any:
    """``X[rows]``: a copy for in-memory matrices, a lazy :class:`Subset` on disk."""
    return Subset(X, rows) if is_ondisk(X) else X[rows]


def take_columns(X: Any, cols: np.ndarray) -> Any:
    """``X[:, cols]``: a copy for in-memory matrices, a lazy :class:`Subset` on disk."""
    return Subset(X, cols=cols) if is_ondisk(X) else X[:, cols]


def row_chunks(
    X: Any, rows: np.ndarray | None = None, *, chunk_nnz: int = CHUNK_NNZ
) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
    """``(positions, X[rows[positions]])`` in order, about ``chunk_nnz`` stored values each.

    In-memory matrices come as one chunk (no copy when ``rows`` is None).
    """
    n = X.shape[0] if rows is None else len(rows)
    if not is_ondisk(X):
        block = X if rows is None else X[rows]
        yield np.arange(n), sparse.csr_matrix(block)
        return
    per_row = X.nnz / max(X.shape[0], 1) if isinstance(X, H5CSR) else X.nnz_per_row
    step = max(1, int(chunk_nnz / max(per_row, 1.0)))
    for s in range(0, n, step):
        pos = np.arange(s, min(n, s + step))
        yield pos, X[pos if rows is None else rows[pos]]


def row_sums(X: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """``np.asarray(X[rows].sum(1)).ravel()``, chunk by chunk for on-disk matrices.

    The dtype is scipy's (float32 sums of float32 counts), so that in-memory results
    are exactly those of the plain expression; an in-memory matrix is summed whole and
    the rows picked from the sums (each row's sum is the same), without copying them.
    """
    if not is_ondisk(X):
        sums = np.asarray(X.sum(1)).ravel()
        return sums if rows is None else sums[rows]
    parts = [np.asarray(block.sum(1)).ravel() for _, block in row_chunks(X, rows)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=X.dtype)


class CSRWriter:
    """Append rows of a CSR matrix chunk by chunk, then store it in an h5ad file.

    The stored values are first appended to two raw files in ``tmpdir`` (their final
    number is not known in advance) and copied into contiguous HDF5 datasets by
    :meth:`write` (no chunking or compression, as anndata writes by default, so that
    row ranges read fast). Memory holds one chunk and ``indptr``; the disk holds the
    values twice for a moment.

    Parameters
    ----------
    tmpdir
        Folder for the two raw files.
    n_cols
        Number of columns.
    """

    _COPY_VALUES = 1 << 24

    def __init__(self, tmpdir: str | os.PathLike, n_cols: int) -> None:
        self.n_cols = int(n_cols)
        self._data_path = Path(tmpdir) / "data.bin"
        self._indices_path = Path(tmpdir) / "indices.bin"
        self._data = open(self._data_path, "wb")  # noqa: SIM115 - closed in write()
        self._indices = open(self._indices_path, "wb")  # noqa: SIM115
        self._row_nnz: list[np.ndarray] = []
        self.nnz = 0

    def append(self, block: sparse.csr_matrix) -> None:
        """Append the rows of ``block`` (float32 values, sorted column indices)."""
        block = sparse.csr_matrix(block)
        self._data.write(np.asarray(block.data, dtype=np.float32).tobytes())
        self._indices.write(np.asarray(block.indices, dtype=np.int32).tobytes())
        self._row_nnz.append(np.diff(block.indptr).astype(np.int64))
        self.nnz += block.nnz

    @property
    def n_rows(self) -> int:
        """Rows appended so far."""
        return int(sum(r.size for r in self._row_nnz))

    def write(self, parent: h5py.Group, key: str) -> h5py.Group:
        """Store the matrix as ``parent[key]`` in anndata's ``csr_matrix`` encoding."""
        self._data.close()
        self._indices.close()
        indptr = np.zeros(self.n_rows + 1, dtype=np.int64)
        if self._row_nnz:
            np.cumsum(np.concatenate(self._row_nnz), out=indptr[1:])
        # One index dtype for indptr and indices, as scipy expects (mixed ones break some
        # scipy operations on the matrix anndata reads back).
        index_dtype = np.int32 if self.nnz < np.iinfo(np.int32).max else np.int64
        group = parent.create_group(key)
        group.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": np.array([self.n_rows, self.n_cols], dtype=np.int64),
            }
        )
        group.create_dataset("indptr", data=indptr.astype(index_dtype))
        for name, raw, dtype, out_dtype in (
            ("data", self._data_path, np.float32, np.float32),
            ("indices", self._indices_path, np.int32, index_dtype),
        ):
            out = group.create_dataset(name, shape=(self.nnz,), dtype=out_dtype)
            # Plain reads, not a memmap: mapped pages would count as resident memory.
            with open(raw, "rb") as handle:
                for s in range(0, self.nnz, self._COPY_VALUES):
                    values = np.fromfile(handle, dtype=dtype, count=self._COPY_VALUES)
                    out[s : s + values.size] = values.astype(out_dtype, copy=False)
            raw.unlink()
        return group
