"""Batches and covariates: one file with a batch column, or one file per sample.

A dataset has batches in one of two ways:

- one file whose obs column ``batch_key`` names each cell's batch (a plate, a donor, a
  condition): :func:`add_batch_columns` copies it to a categorical ``obs["batch"]`` and
  keeps the original column;
- several files, one per sample (for example several Cell Ranger folders):
  :func:`read_samples` reads each with :func:`scvae.data.readers.read_counts` (format
  detected per file) and concatenates them on their shared genes, with the sample name
  as ``obs["batch"]`` and as the prefix of every cell name.

Covariates are further categorical obs columns (a donor, a protocol) that a batch-aware
model conditions on; each keeps its own name. Batch and covariate values are strings and
every cell has one: a missing column, or an empty or missing value, is an
:class:`scvae.errors.InputError` naming the file. :func:`read_dataset` is the entry point
of the preprocess stage.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd

from scvae.data.readers import (
    column_as_strings,
    make_names_unique,
    read_counts,
    require_obs_column,
)
from scvae.errors import InputError

__all__ = [
    "BATCH_KEY",
    "add_batch_columns",
    "batch_column",
    "check_covariate_keys",
    "concat_samples",
    "covariate_column",
    "read_dataset",
    "read_samples",
]

logger = logging.getLogger(__name__)

BATCH_KEY = "batch"
"""The obs column that holds each cell's batch, whatever the input called it."""

# Sample names become batch values and cell-name prefixes, and are passed on the command
# line as NAME=PATH: no whitespace and no "=".
_SAMPLE_NAME = re.compile(r"[^\s=]+")


# ---------------------------------------------------------------------------- columns


def batch_column(obs: pd.DataFrame, batch_key: str, path: Path | str) -> pd.Categorical:
    """Each cell's batch from an obs column, as categorical strings.

    Parameters
    ----------
    obs
        The input's obs.
    batch_key
        The column holding the batches.
    path
        The input file, named in the errors.

    Returns
    -------
    pandas.Categorical
        One batch per cell; whole numbers as ``"1"``, not ``"1.0"``.

    Raises
    ------
    InputError
        If ``batch_key`` is not a column (the message lists those there are), or a
        cell has an empty or missing value (the message gives their number and one).
    """
    return _complete_strings(obs, batch_key, path, what="batch_key")


def covariate_column(obs: pd.DataFrame, key: str, path: Path | str) -> pd.Categorical:
    """A categorical covariate from an obs column, as categorical strings.

    Parameters
    ----------
    obs
        The input's obs.
    key
        The column holding the covariate.
    path
        The input file, named in the errors.

    Returns
    -------
    pandas.Categorical
        One value per cell.

    Raises
    ------
    InputError
        As :func:`batch_column`.
    """
    return _complete_strings(obs, key, path, what="covariate")


def _complete_strings(
    obs: pd.DataFrame, key: str, path: Path | str, *, what: str
) -> pd.Categorical:
    require_obs_column(obs, key, path, what=what)
    values = column_as_strings(obs[key])
    blank = [i for i, name in enumerate(values.categories) if not name.strip()]
    missing = (values.codes < 0) | np.isin(values.codes, blank)
    if missing.any():
        example = obs.index[int(np.argmax(missing))]
        raise InputError(
            f"{path}: {what} {key!r}: {int(missing.sum())} of {missing.size} cells have no "
            f"value (empty or NaN), for example cell {example!r}; every cell needs one. Fill "
            "them in, or remove those cells from the input."
        )
    return values


def check_covariate_keys(covariates: Iterable[str], batch_key: str | None = None) -> list[str]:
    """Check the covariate column names before any file is read.

    Parameters
    ----------
    covariates
        obs columns to use as categorical covariates.
    batch_key
        The batch column, if any (it cannot be a covariate as well).

    Returns
    -------
    list of str
        The covariates, in order.

    Raises
    ------
    InputError
        If a name is not a non-empty string, repeats, is ``"batch"`` (the column that
        holds the batch) or is the batch column.
    """
    if isinstance(covariates, str):
        covariates = [covariates]  # one name, not its letters
    keys = list(covariates)
    for key in keys:
        if not isinstance(key, str) or not key:
            raise InputError(f"covariates: {key!r} is not an obs column name.")
        if key == BATCH_KEY or key == batch_key:
            raise InputError(
                f"covariates: {key!r} is the batch column; the batch is conditioned on "
                "already (set it with batch_key or samples, not as a covariate)."
            )
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InputError(f"covariates: {', '.join(map(repr, repeated))} given more than once.")
    return keys


def add_batch_columns(
    adata: anndata.AnnData,
    path: Path | str,
    *,
    batch_key: str | None = None,
    covariates: Iterable[str] = (),
) -> None:
    """Add ``obs["batch"]`` from ``batch_key`` and make each covariate categorical, in place.

    Every column is checked before ``adata`` is changed. ``obs[batch_key]`` is kept
    as it was; a different column already called ``"batch"`` is replaced, with a
    warning. ``uns["scvae"]["input"]["batch_key"]`` records the source column.

    Parameters
    ----------
    adata
        Data just read from ``path`` (:func:`scvae.data.readers.read_counts`).
    path
        The input file, named in the errors.
    batch_key
        obs column holding each cell's batch; None when the file has no batches.
    covariates
        obs columns holding categorical covariates; each becomes categorical strings
        under its own name.

    Raises
    ------
    InputError
        As :func:`batch_column` and :func:`check_covariate_keys`.
    """
    keys = check_covariate_keys(covariates, batch_key)
    columns = {key: covariate_column(adata.obs, key, path) for key in keys}
    if batch_key is not None:
        columns = {BATCH_KEY: batch_column(adata.obs, batch_key, path), **columns}
        if batch_key != BATCH_KEY and BATCH_KEY in adata.obs:
            _warn(
                f"{path}: the obs column 'batch' is replaced by the batches of batch_key "
                f"{batch_key!r}."
            )
    for key, values in columns.items():
        adata.obs[key] = values
    if batch_key is None:
        return
    source = adata.uns.get("scvae", {}).get("input")
    if isinstance(source, dict):
        source["batch_key"] = batch_key
    log_batches(adata.obs[BATCH_KEY], str(path), what=f"batch_key {batch_key!r}")


def log_batches(batches: pd.Series, source: str, *, what: str) -> None:
    """Log the batches and their cells; warn when there is only one.

    Parameters
    ----------
    batches
        Each cell's batch.
    source
        The input, named in the line.
    what
        Where the batches came from (``"batch_key 'plate'"``, ``"samples"``).
    """
    sizes = batches.value_counts(sort=False)
    logger.info(
        "%s: %d batches from %s: %s",
        source,
        sizes.size,
        what,
        ", ".join(f"{name} ({n} cells)" for name, n in sizes.items()),
    )
    if sizes.size == 1:
        _warn(
            f"{source}: {what} gives a single batch ({sizes.index[0]!r}); there is no "
            "batch effect to correct."
        )


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------- samples


def read_samples(
    samples: Mapping[str, str | os.PathLike],
    *,
    covariates: Iterable[str] = (),
    format: str | None = None,
    label_key: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
) -> anndata.AnnData:
    """Read one file per sample and concatenate them, the sample name as the batch.

    Parameters
    ----------
    samples
        Sample name -> count file or 10x folder; each may be in any format that
        :func:`scvae.data.readers.read_counts` reads, detected per file.
    covariates
        obs columns every file holds, made categorical strings.
    format, label_key, layer, transpose
        As :func:`scvae.data.readers.read_counts`, for every file.

    Returns
    -------
    anndata.AnnData
        As :func:`concat_samples`; ``uns["scvae"]["input"]`` records every file and
        its format.

    Raises
    ------
    InputError
        If no sample is given, a name is empty or holds whitespace or ``=``, two
        samples name the same file, a file cannot be read, lacks a covariate or a
        label column, or the files share no gene.
    """
    if not samples:
        raise InputError("samples: no files given; name at least one sample and its file.")
    keys = check_covariate_keys(covariates)
    _check_sample_names(samples)
    parts, paths = {}, {}
    for name, path in samples.items():
        path = Path(path)
        adata = read_counts(
            path, format=format, label_key=label_key, layer=layer, transpose=transpose
        )
        add_batch_columns(adata, path, covariates=keys)
        parts[name], paths[name] = adata, path
    return concat_samples(parts, paths)


def _check_sample_names(samples: Mapping[str, Any]) -> None:
    for name in samples:
        if not isinstance(name, str) or not _SAMPLE_NAME.fullmatch(name):
            raise InputError(
                f"samples: sample name {name!r} must be a non-empty name without spaces "
                "or '='; it becomes the batch and the prefix of the cell names."
            )
    seen: dict[Path, str] = {}
    for name, path in samples.items():
        resolved = Path(path).resolve()
        if resolved in seen:
            raise InputError(f"samples: {seen[resolved]!r} and {name!r} name the same file {path}.")
        seen[resolved] = name


def concat_samples(
    parts: Mapping[str, anndata.AnnData], paths: Mapping[str, Path | str] | None = None
) -> anndata.AnnData:
    """Concatenate the samples' cells on the genes all of them have.

    Genes are matched by name and kept in the order of the first sample. When the
    samples' genes differ, the shared ones are kept and a warning says how many each
    file had and how many are shared.

    Parameters
    ----------
    parts
        Sample name -> its data, each as :func:`scvae.data.readers.read_counts` returns.
    paths
        Sample name -> its file, named in the messages (default: the sample names).

    Returns
    -------
    anndata.AnnData
        Cells of every sample, named ``<sample>_<cell>``; ``obs["batch"]`` the sample
        name (categorical, in the order given); X and ``layers["counts"]`` the raw
        counts; obs columns of any sample (missing where a sample lacks them); the
        var columns and obsm entries that all samples share.

    Raises
    ------
    InputError
        If the samples share no gene name.
    """
    paths = {name: paths[name] if paths else name for name in parts}
    shared = _shared_genes(parts, paths)
    pieces = []
    for name, adata in parts.items():
        # By name, in the first sample's order: the same genes may come in another order.
        piece = adata if adata.var_names.equals(shared) else adata[:, shared]
        piece = anndata.AnnData(
            X=piece.X,
            obs=piece.obs.copy(),
            var=piece.var,
            obsm=dict(piece.obsm),
            layers={"counts": piece.layers["counts"]} if "counts" in piece.layers else None,
        )
        if BATCH_KEY in piece.obs:
            _warn(f"{paths[name]}: the obs column 'batch' is replaced by the sample name {name!r}.")
        piece.obs_names = [f"{name}_{cell}" for cell in piece.obs_names]
        pieces.append(piece)
    adata = anndata.concat(pieces, join="inner", merge="same")
    adata.obs[BATCH_KEY] = pd.Categorical(
        np.repeat(list(parts), [p.n_obs for p in pieces]), categories=list(parts)
    )
    # Columns of several files: anndata joins categoricals with different categories as
    # plain objects; labels and covariates are categorical strings again.
    for key in adata.obs.columns:
        if key != BATCH_KEY and adata.obs[key].dtype == object:
            values = adata.obs[key]
            if all(isinstance(v, str) for v in values.dropna()):
                adata.obs[key] = pd.Categorical(values)
    if "counts" not in adata.layers or adata.layers["counts"] is adata.X:
        adata.layers["counts"] = adata.X.copy()
    description = "samples " + ", ".join(f"{name}={paths[name]}" for name in parts)
    make_names_unique(adata, description)
    formats = {
        name: str(p.uns.get("scvae", {}).get("input", {}).get("format", "unknown"))
        for name, p in parts.items()
    }
    adata.uns["scvae"] = {
        "input": {
            "path": description,
            "format": ", ".join(sorted(set(formats.values()))),
            "samples": {
                name: {"path": str(paths[name]), "format": formats[name]} for name in parts
            },
        }
    }
    logger.info("Concatenated %d samples: %d cells x %d genes", len(parts), *adata.shape)
    log_batches(adata.obs[BATCH_KEY], description, what="samples")
    return adata


def _shared_genes(
    parts: Mapping[str, anndata.AnnData], paths: Mapping[str, Path | str]
) -> pd.Index:
    names = list(parts)
    first = parts[names[0]].var_names
    common = set(first)
    for name in names[1:]:
        common &= set(parts[name].var_names)
    shared = first[first.isin(common)]
    sizes = ", ".join(f"{name} ({paths[name]}): {parts[name].n_vars}" for name in names)
    if not shared.size:
        examples = "; ".join(
            f"{name}: {', '.join(map(repr, parts[name].var_names[:3]))}, ..." for name in names
        )
        raise InputError(
            f"samples: the files share no gene name (genes per file: {sizes}). The names "
            f"must match across files (all gene symbols or all Ensembl ids); they begin "
            f"{examples}."
        )
    if any(parts[name].n_vars != shared.size for name in names):
        _warn(
            f"samples: the files' genes differ (genes per file: {sizes}); the {shared.size} "
            "genes that all files share are kept, the others dropped."
        )
    return shared


# ------------------------------------------------------------------------ entry point


def read_dataset(
    input: str | os.PathLike | None = None,
    *,
    samples: Mapping[str, str | os.PathLike] | None = None,
    batch_key: str | None = None,
    covariates: Iterable[str] = (),
    format: str | None = None,
    label_key: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
) -> anndata.AnnData:
    """Read a dataset: one file (with an optional batch column) or one file per sample.

    Parameters
    ----------
    input
        Count file or 10x folder; None when ``samples`` is given.
    samples
        Sample name -> file, instead of ``input`` (:func:`read_samples`).
    batch_key
        obs column of ``input`` holding each cell's batch (:func:`add_batch_columns`);
        with ``samples`` the sample is the batch, so it must be None.
    covariates
        obs columns holding categorical covariates.
    format, label_key, layer, transpose
        As :func:`scvae.data.readers.read_counts`.

    Returns
    -------
    anndata.AnnData
        As :func:`scvae.data.readers.read_counts`, plus ``obs["batch"]`` when the
        dataset has batches and the covariates as categorical strings.

    Raises
    ------
    InputError
        If both or neither of ``input`` and ``samples`` are given, ``batch_key`` comes
        with ``samples``, or as :func:`read_samples` and :func:`add_batch_columns`.
    """
    options = {"format": format, "label_key": label_key, "layer": layer, "transpose": transpose}
    if (input is None) == (samples is None):
        raise InputError("give either one input file or samples (one file per sample), not both.")
    if samples is not None:
        if batch_key is not None:
            raise InputError(
                f"batch_key {batch_key!r} cannot be combined with samples: the sample name "
                "is the batch. List the column under covariates to condition on it as well."
            )
        return read_samples(samples, covariates=covariates, **options)
    check_covariate_keys(covariates, batch_key)  # before reading a large file
    adata = read_counts(input, **options)
    add_batch_columns(adata, input, batch_key=batch_key, covariates=covariates)
    return adata
