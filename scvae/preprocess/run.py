"""The workflow's preprocess stage: read, check, plot QC, filter, write -- in memory or streamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from scvae.data.formats import detect_format
from scvae.data.h5ad import write_h5ad
from scvae.data.ondisk import backed_min_bytes
from scvae.data.readers import read_counts
from scvae.preprocess.memory import effective_settings, preprocess
from scvae.preprocess.streamed import preprocess_h5ad_backed

__all__ = ["run_preprocess"]


def run_preprocess(
    input: str | os.PathLike,
    output: str | os.PathLike,
    qc_plot: str | os.PathLike,
    *,
    format: str | None = None,
    label_key: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
    **filter_settings: Any,
) -> None:
    """Read, check and preprocess a count matrix; write the h5ad and a QC plot.

    The QC plot shows the cells before filtering, with the thresholds drawn in, so
    that it explains what was removed; it is written before filtering, so it exists
    even when filtering leaves no cells. An h5ad input of at least
    :func:`scvae.data.ondisk.backed_min_bytes` whose counts are stored as CSR is
    streamed (:func:`scvae.preprocess.streamed.preprocess_h5ad_backed`: the same
    result, in memory that does not grow with the counts).

    Parameters
    ----------
    input
        Input file or 10x folder (see :func:`scvae.data.readers.read_counts`).
    output
        Destination ``.h5ad``, written atomically.
    qc_plot
        Destination ``.png`` of the QC plot, written atomically.
    format
        Input format; detected when None.
    label_key
        obs column holding the cell labels.
    layer
        h5ad/loom layer holding the raw counts.
    transpose
        The text or X/Y input is genes x cells.
    **filter_settings
        Any of :data:`scvae.preprocess.memory.FILTER_SETTINGS`, passed to
        :func:`scvae.preprocess.memory.preprocess`.

    Raises
    ------
    InputError
        On bad input or settings (see :func:`scvae.data.readers.read_counts` and
        :func:`scvae.preprocess.memory.preprocess`).
    """
    from scvae.plotting.qc import plot_qc

    settings = effective_settings(**filter_settings)
    if _large_h5ad(input, format, layer):
        # Streamed in chunks of rows: memory does not grow with the counts.
        preprocess_h5ad_backed(input, output, qc_plot, label_key=label_key, layer=layer, **settings)
        return
    adata = read_counts(input, format=format, label_key=label_key, layer=layer, transpose=transpose)
    plot_qc(adata, qc_plot, thresholds=settings, mito_prefix=settings["mito_prefix"])
    preprocess(adata, **settings)
    write_h5ad(adata, output)


def _large_h5ad(path: str | os.PathLike, format: str | None, layer: str | None) -> bool:
    """An h5ad input of at least :func:`scvae.data.ondisk.backed_min_bytes` with CSR counts."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size < backed_min_bytes():
        return False
    if (format or detect_format(path)) != "h5ad":
        return False
    try:
        with h5py.File(path, "r") as f:
            key = "X" if layer is None else f"layers/{layer}"
            # A missing matrix is reported by the streamed reader, without loading the file.
            return key not in f or f[key].attrs.get("encoding-type") == "csr_matrix"
    except OSError:
        return False  # the in-memory reader reports the corrupt file
