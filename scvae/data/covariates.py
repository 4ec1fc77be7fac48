"""The batch and covariates of cells: their categories, the codes a model reads, the record."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from scvae.errors import InputError


def _obs_values(adata: AnnData, key: str, source: str) -> pd.Series:
    """``adata.obs[key]`` as strings; an error names the columns there are, or the NaNs."""
    if key not in adata.obs.columns:
        raise InputError(
            f"{source}: no obs column {key!r} (the columns are {list(adata.obs.columns)})"
        )
    values = adata.obs[key]
    missing = int(pd.isna(values).sum())
    if missing:
        raise InputError(
            f"{source}: obs column {key!r} has {missing} empty (NaN) value(s) of "
            f"{len(values)}; give every cell a category"
        )
    return values.astype(object).astype(str)


def covariate_categories(
    adata: AnnData, keys: list[str] | tuple[str, ...], *, source: str = "AnnData"
) -> dict[str, list[str]]:
    """The categories of each covariate column of ``adata.obs``, sorted, as strings.

    Parameters
    ----------
    adata
        The cells.
    keys
        obs columns (the batch first).
    source
        What the data came from, for error messages.

    Returns
    -------
    dict
        Column -> its sorted categories; the code of a value is its position there.

    Raises
    ------
    InputError
        When a column is missing (the message lists those there are), repeated, or has
        empty (NaN) values.
    """
    repeated = sorted({k for k in keys if list(keys).count(k) > 1})
    if repeated:
        raise InputError(f"{source}: covariate column(s) {repeated} given twice")
    return {key: sorted(set(_obs_values(adata, key, source))) for key in keys}


def covariate_codes(
    adata: AnnData, categories: dict[str, list[str]], *, source: str = "AnnData"
) -> np.ndarray | None:
    """Integer codes of the cells' covariates under known categories.

    Parameters
    ----------
    adata
        The cells.
    categories
        Column -> categories (:func:`covariate_categories`); empty: no covariates.
    source
        What the data came from, for error messages.

    Returns
    -------
    numpy.ndarray or None
        int64 codes, cells x covariates (columns in the order of ``categories``), or
        None when there are no covariates.

    Raises
    ------
    InputError
        When a column is missing, has NaN values, or holds categories not in
        ``categories`` (the message names them).
    """
    if not categories:
        return None
    codes = np.empty((adata.n_obs, len(categories)), dtype=np.int64)
    for j, (key, cats) in enumerate(categories.items()):
        values = _obs_values(adata, key, source)
        index = pd.Index(cats).get_indexer(values)
        if (index < 0).any():
            unknown = sorted(set(values[index < 0]))
            raise InputError(
                f"{source}: obs column {key!r} holds categories the model was not trained "
                f"on: {unknown[:10]}{' ...' if len(unknown) > 10 else ''} (it knows {cats}); "
                "mapping new batches into a trained model is not supported"
            )
        codes[:, j] = index
    return codes


def recorded_covariates(adata: AnnData) -> tuple[str | None, list[str]]:
    """The batch column and covariate columns the preprocessing stage recorded.

    Parameters
    ----------
    adata
        A preprocessed AnnData (``uns["scvae"]["preprocess"]``).

    Returns
    -------
    tuple
        ``(batch_key, covariate_keys)``: None and ``[]`` when absent.
    """
    pre = adata.uns.get("scvae", {}).get("preprocess", {})
    batch_key = pre.get("batch_key")
    # An h5ad round trip gives numpy strings and arrays.
    batch_key = str(batch_key) if batch_key is not None and str(batch_key) else None
    keys = pre.get("covariate_keys")
    return batch_key, [str(k) for k in (keys if keys is not None else [])]
