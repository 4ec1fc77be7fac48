"""The ``preprocess`` stage: read, check, plot QC, filter, write -- in memory or streamed."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py

from scvae.data.batches import BATCH_KEY, check_covariate_keys, read_dataset
from scvae.data.formats import detect_format
from scvae.data.h5ad import write_h5ad
from scvae.data.ondisk import backed_min_bytes
from scvae.errors import InputError
from scvae.plotting.qc import plot_qc
from scvae.preprocess.memory import effective_settings, preprocess
from scvae.preprocess.streamed import preprocess_h5ad_backed

__all__ = ["run_preprocess"]


def run_preprocess(
    input: str | os.PathLike | None,
    output: str | os.PathLike,
    qc_plot: str | os.PathLike,
    *,
    samples: Mapping[str, str | os.PathLike] | None = None,
    batch_key: str | None = None,
    covariates: Iterable[str] = (),
    format: str | None = None,
    label_key: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
    **filter_settings: Any,
) -> None:
    """Read, check and preprocess a count matrix; write the h5ad and a QC plot.

    The QC plot shows the cells before filtering, with the thresholds drawn in, so
    that it explains what was removed (one row per batch when the dataset has
    batches); it is written before filtering, so it exists even when filtering leaves
    no cells. An h5ad input of at least :func:`scvae.data.ondisk.backed_min_bytes`
    whose counts are stored as CSR is streamed
    (:func:`scvae.preprocess.streamed.preprocess_h5ad_backed`: the same result, batches
    and covariates included, in memory that does not grow with the counts). Several
    sample files are combined in memory, so a sample file that large is an error.

    Parameters
    ----------
    input
        Input file or 10x folder (see :func:`scvae.data.readers.read_counts`); None
        when ``samples`` is given.
    output
        Destination ``.h5ad``, written atomically.
    qc_plot
        Destination ``.png`` of the QC plot, written atomically.
    samples
        Sample name -> file, one per sample, instead of ``input``; the sample name is
        the batch (:func:`scvae.data.batches.read_samples`).
    batch_key
        obs column of ``input`` holding each cell's batch; copied to ``obs["batch"]``.
    covariates
        obs columns holding categorical covariates.
    format
        Input format; detected (per file) when None.
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
        On bad input or settings (see :func:`scvae.data.batches.read_dataset` and
        :func:`scvae.preprocess.memory.preprocess`).
    """
    settings = effective_settings(**filter_settings)
    covariates = check_covariate_keys(covariates, batch_key)
    if samples is not None:
        for name, path in samples.items():
            if _large_h5ad(path, format, layer):
                raise _large_sample_error(name, Path(path))
    elif input is not None and _large_h5ad(input, format, layer):
        # Streamed in chunks of rows: memory does not grow with the counts.
        preprocess_h5ad_backed(
            input,
            output,
            qc_plot,
            label_key=label_key,
            layer=layer,
            batch_key=batch_key,
            covariates=covariates,
            **settings,
        )
        return
    adata = read_dataset(
        input,
        samples=samples,
        batch_key=batch_key,
        covariates=covariates,
        format=format,
        label_key=label_key,
        layer=layer,
        transpose=transpose,
    )
    batches = BATCH_KEY if samples is not None or batch_key is not None else None
    plot_qc(
        adata, qc_plot, thresholds=settings, mito_prefix=settings["mito_prefix"], batch_key=batches
    )
    preprocess(adata, **settings, batch_key=batches, covariate_keys=covariates)
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


def _large_sample_error(name: str, path: Path) -> InputError:
    size_gb = path.stat().st_size / (1 << 30)
    return InputError(
        f"samples: {name!r} ({path}, {size_gb:.2f} GiB) is large enough for the streamed "
        f"(out-of-core) path (from {backed_min_bytes() / (1 << 30):g} GiB), which reads one "
        "file: several sample files are combined in memory. Concatenate the samples into "
        "one h5ad with a batch column (anndata.concat(..., label='batch')) and give it as "
        "path with batch_key: batch, which streams; or, with enough memory, raise "
        "SCVAE_BACKED_MIN_GB above the largest file."
    )
