"""Quality-control metrics on raw counts: mitochondrial genes and scanpy's QC metrics."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scanpy as sc

__all__ = ["add_qc_metrics", "drop_stale_mito_metrics", "mito_fraction", "mito_genes"]


def mito_genes(adata: anndata.AnnData, prefix: str = "MT-") -> np.ndarray:
    """Flag mitochondrial genes by name prefix, ignoring case (``MT-`` and ``mt-``).

    Parameters
    ----------
    adata
        Data whose ``var_names`` are gene symbols.
    prefix
        Name prefix of mitochondrial genes.

    Returns
    -------
    numpy.ndarray
        Boolean mask over genes.
    """
    names = adata.var_names.astype(str).str.upper()
    return np.asarray(names.str.startswith(prefix.upper()), dtype=bool)


def mito_fraction(mito: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Fraction (0-1) of each cell's counts in mitochondrial genes; 0 for cells with none.

    Parameters
    ----------
    mito
        Mitochondrial counts per cell.
    totals
        Total counts per cell.

    Returns
    -------
    numpy.ndarray
        ``mito / totals`` where ``totals > 0``, else 0 (the dtype of ``mito``).
    """
    return np.divide(mito, totals, out=np.zeros_like(mito), where=totals > 0)


def add_qc_metrics(
    adata: anndata.AnnData,
    *,
    mito_prefix: str = "MT-",
    layer: str | None = None,
    copy: bool = False,
) -> anndata.AnnData | None:
    """Add scanpy's QC metrics of the raw counts to obs and var.

    :func:`scanpy.pp.calculate_qc_metrics` with the mitochondrial genes as the one QC
    gene set, no top-gene percentages and no log1p columns. Mitochondrial columns of an
    earlier run are dropped first (a run that finds no mitochondrial genes writes none).

    Parameters
    ----------
    adata
        Data with raw counts in ``X`` (or ``layers[layer]``).
    mito_prefix
        Name prefix of mitochondrial genes (case-insensitive).
    layer
        Layer of the raw counts; None: ``X``.
    copy
        Return a copy with the metrics instead of adding them to ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy when ``copy=True``, else None. Written: ``obs["n_genes_by_counts"]``
        and ``obs["total_counts"]``, plus ``obs["total_counts_mt"]`` and
        ``obs["pct_counts_mt"]`` (a percentage, 0-100) when there are mitochondrial
        genes; ``var["mt"]`` (whether a gene is mitochondrial),
        ``var["n_cells_by_counts"]``, ``var["mean_counts"]``,
        ``var["pct_dropout_by_counts"]`` and ``var["total_counts"]``. The names are
        scanpy's, which its plots and the filters of :func:`scvae.preprocess.preprocess`
        read, so there is no ``key_added``.
    """
    adata = adata.copy() if copy else adata
    adata.var["mt"] = mito_genes(adata, mito_prefix)
    has_mito = bool(adata.var["mt"].any())
    drop_stale_mito_metrics(adata.obs)
    sc.pp.calculate_qc_metrics(
        adata,
        qc_vars=["mt"] if has_mito else [],
        percent_top=None,
        log1p=False,
        layer=layer,
        inplace=True,
    )
    return adata if copy else None


def drop_stale_mito_metrics(obs: pd.DataFrame) -> None:
    """Delete mitochondrial QC columns of an earlier run, in place.

    ``total_counts_mt`` and ``pct_counts_mt`` are only computed when there are
    mitochondrial genes, so columns from an earlier run would otherwise survive a run
    that finds none.

    Parameters
    ----------
    obs
        Cell annotations about to receive new QC metrics.
    """
    for stale in ("total_counts_mt", "pct_counts_mt"):
        if stale in obs:
            del obs[stale]
