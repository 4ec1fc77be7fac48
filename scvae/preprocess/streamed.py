"""Preprocessing of an h5ad file too large for memory: the same steps, streamed.

:func:`preprocess_h5ad_backed` gives the output of :func:`scvae.data.readers.read_counts` +
:func:`scvae.preprocess.memory.preprocess` + :func:`scvae.data.h5ad.write_h5ad` (the
workflow's preprocess stage) for an h5ad input whose counts are a CSR matrix (``X`` or a
layer), reading the counts in chunks of rows and writing the result chunk by chunk: memory
holds one chunk, per-cell and per-gene statistics and obs/var, never the matrix. What each
step removes is decided by the functions the in-memory path uses
(:mod:`scvae.preprocess.steps`); only the statistics are computed differently.

Four passes over the file:

1. per cell: detected genes, total and mitochondrial counts (cell filters); per gene:
   detection in any cell and in the cells that pass (gene filters) -- :func:`_cell_stats`;
2. on the genes that pass: the QC metrics of obs (``sc.pp.calculate_qc_metrics`` on
   each chunk), cells left with no counts, per-gene sums and sums of squares, per batch
   (var QC metrics, means and variances of seurat_v3) -- :func:`_gene_moments`;
3. seurat_v3's clipped sums, per batch (after its loess fit of the variances on the
   means in each batch) -- :func:`_seurat_v3`;
4. the selected cells and genes, written to the output -- :func:`_append_counts`, then
   :func:`_write_elements`.

A batch column (``batch_key``) and covariates are read and checked as
:func:`scvae.data.batches.read_dataset` does, every batch must keep as many cells as in
memory, and seurat_v3 ranks the genes per batch as ``sc.pp.highly_variable_genes(...,
batch_key="batch")`` does. Selected cells and genes, counts, obs, obsm, uns and the
recorded steps are those of the in-memory path; the floating-point var columns
(``means``, ``variances``, ``variances_norm``, ``mean_counts``, ``total_counts``) agree
to rounding (sums are accumulated per chunk in float64;
``tests/preprocess/test_streamed.py`` compares the two). ``X`` and ``layers["counts"]``
are the same HDF5 group (a hard link), so the counts are on disk once; reading the file
into memory gives two copies, as the in-memory path's output does.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
from anndata.io import read_elem, write_elem
from scanpy.preprocessing._highly_variable_genes import _sum_and_sum_squares_clipped
from scipy import sparse

from scvae.data.batches import BATCH_KEY, add_batch_columns, check_covariate_keys
from scvae.data.checks import ChunkedCountCheck, check_counts
from scvae.data.h5ad import plain_dicts
from scvae.data.ondisk import H5CSR, CSRWriter, row_chunks
from scvae.data.readers import labels_from_column, layers_hint, make_names_unique, to_csr_float32
from scvae.errors import InputError
from scvae.plotting.qc import plot_qc
from scvae.preprocess.memory import effective_settings
from scvae.preprocess.qc import drop_stale_mito_metrics, mito_fraction, mito_genes
from scvae.preprocess.steps import (
    FilterPlan,
    batch_sizes,
    check_batch_sizes,
    drop_cells_left_empty,
    drop_cells_without_hvg_counts,
    drop_empty,
    failed_cell_filters,
    filter_cells,
    filter_genes,
    fit_variance_trend,
    hvg_fit_error,
    hvg_needed,
    loess_message,
    record_hvg,
    require_hvg_backend,
    skip_hvg,
    store_record,
    validate_settings,
)
from scvae.utils.atomic import atomic_path

__all__ = ["preprocess_h5ad_backed"]

logger = logging.getLogger(__name__)


def preprocess_h5ad_backed(
    input: str | os.PathLike,
    output: str | os.PathLike,
    qc_plot: str | os.PathLike | None = None,
    *,
    label_key: str | None = None,
    layer: str | None = None,
    batch_key: str | None = None,
    covariates: Iterable[str] = (),
    **filter_settings: Any,
) -> dict[str, Any]:
    """Read, check, filter and write a large h5ad without loading its counts.

    Parameters
    ----------
    input
        h5ad file whose counts (``X``, or ``layers[layer]``) are stored as CSR.
    output
        Destination ``.h5ad``, written atomically.
    qc_plot
        Destination ``.png`` of the QC plot (cells before filtering), or None.
    label_key
        obs column holding the cell labels (copied to ``obs["label"]``).
    layer
        Layer holding the raw counts (None: ``X``).
    batch_key
        obs column holding each cell's batch, copied to ``obs["batch"]``
        (:func:`scvae.data.batches.add_batch_columns`); None without batches.
    covariates
        obs columns holding categorical covariates.
    **filter_settings
        :data:`scvae.preprocess.memory.FILTER_SETTINGS` (defaults as
        :func:`scvae.preprocess.memory.preprocess`).

    Returns
    -------
    dict
        The record stored in ``uns["scvae"]["preprocess"]``.

    Raises
    ------
    InputError
        As :func:`scvae.data.readers.read_counts` and :func:`scvae.preprocess.memory.preprocess`.
    ValueError
        If the counts are not stored as CSR (use the in-memory path).
    """
    path = Path(input)
    settings = validate_settings(**effective_settings(**filter_settings))
    covariates = check_covariate_keys(covariates, batch_key)
    source = str(path)
    f, X, hint = _open_counts(path, layer)
    try:
        meta, obsm = _read_metadata(f, X, path, label_key, batch_key, covariates)
        batches = None if batch_key is None else pd.Categorical(meta.obs[BATCH_KEY])
        is_mito = mito_genes(meta, settings["mito_prefix"])
        check = ChunkedCountCheck(
            source, hint=hint, obs_names=meta.obs_names, var_names=meta.var_names
        )
        stats = _cell_stats(X, is_mito, settings, check)
        check.finish()
        X = check.counts(X)  # later passes read the file again: rounded as read, if need be
        if qc_plot is not None:  # before filtering, as the in-memory path: it explains them
            _plot(meta, stats, qc_plot, settings, batch_key and BATCH_KEY)
        plan = _plan_filters(stats, is_mito, settings, source, batches)
        moments = _gene_moments(X, plan, meta, is_mito)
        drop_cells_left_empty(plan, moments.has_counts, settings, source)
        if batches is not None:
            step = "4_drop_empty_after_filters"
            check_batch_sizes(batch_sizes(batches, plan.cells), batch_sizes(batches), source, step)
        require_hvg_backend(settings, int(plan.genes.sum()))
        n_obs = int(plan.cells.sum())
        mean = moments.sums / n_obs
        variance = moments.sumsq / n_obs - mean**2
        obs, var = _qc_annotations(meta, plan, is_mito, moments, mean)
        hvg_cols = _select_hvg(X, plan, moments, mean, variance, obs, var, settings, source)
        keys = {"batch_key": batch_key and BATCH_KEY, "covariate_keys": covariates}
        result = _write_output(
            output, X, plan, moments.genes, hvg_cols, obs, var, obsm, settings, source, meta, keys
        )
        logger.info(
            "Preprocessing %s (out of core): %d cells x %d genes -> %d cells x %d genes",
            source,
            *X.shape,
            *result.shape,
        )
        return result.uns["scvae"]["preprocess"]
    finally:
        f.close()


# --------------------------------------------------------------------------- input


def _open_counts(path: Path, layer: str | None) -> tuple[h5py.File, H5CSR, str | None]:
    f = h5py.File(path, "r")
    key = "X" if layer is None else f"layers/{layer}"
    hint = None
    if layer is None and "layers" in f:
        hint = layers_hint(f["layers"])
    if key not in f:
        available = layers_hint(f["layers"] if "layers" in f else [])
        f.close()
        what = "no X matrix." if layer is None else f"no layer {layer!r};"
        raise InputError(f"{path}: has {what} {available}")
    return f, H5CSR(f[key]), hint


def _read_metadata(
    f: h5py.File,
    X: H5CSR,
    path: Path,
    label_key: str | None,
    batch_key: str | None,
    covariates: list[str],
) -> tuple[anndata.AnnData, dict[str, Any]]:
    """The input's obs and var (checked and named as read_dataset does) in an AnnData; obsm."""
    obs = read_elem(f["obs"])
    var = read_elem(f["var"])
    obsm = dict(read_elem(f["obsm"])) if "obsm" in f else {}
    n_cells, n_genes = X.shape
    if n_cells == 0 or n_genes == 0:
        check_counts(sparse.csr_matrix((n_cells, n_genes)), source=str(path))
    meta = anndata.AnnData(obs=obs, var=var)
    meta.uns["scvae"] = {"input": {"path": str(path), "format": "h5ad"}}
    make_names_unique(meta, path)
    if label_key is not None:
        meta.obs["label"] = labels_from_column(meta.obs, label_key, path)
    add_batch_columns(meta, path, batch_key=batch_key, covariates=covariates)
    return meta, obsm


def _chunks(
    X: H5CSR, check: ChunkedCountCheck | None = None
) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
    """``(rows, chunk)`` with the in-memory reader's cleaning (float32, no duplicates or zeros).

    With ``check``, each chunk is checked (and rounded) first, as the reader does it.
    """
    for rows, block in row_chunks(X):
        if check is not None:
            block = check.chunk(block, rows)
        yield rows, to_csr_float32(block)


# --------------------------------------------------------- pass 1: cell and gene filters


@dataclass
class _CellStats:
    """Per-cell statistics of all cells and per-gene detections (pass 1)."""

    n_genes: np.ndarray
    totals: np.ndarray
    mito: np.ndarray | None  # None when no gene is mitochondrial
    genes_detected: np.ndarray  # cells each gene is detected in
    genes_in_passing: np.ndarray  # the same, among the cells that pass the cell filters
    passing: np.ndarray  # the cells that pass (steps 1 and 2)


def _cell_stats(
    X: H5CSR, is_mito: np.ndarray, settings: dict[str, Any], check: ChunkedCountCheck
) -> _CellStats:
    n_cells, n_genes = X.shape
    has_mito = bool(is_mito.any())
    n_det = np.zeros(n_cells, dtype=np.float64)
    totals = np.zeros(n_cells, dtype=np.float64)
    mito = np.zeros(n_cells, dtype=np.float64)
    gene_any = np.zeros(n_genes, dtype=np.float64)
    gene_in_passing = np.zeros(n_genes, dtype=np.float64)
    passing = np.zeros(n_cells, dtype=bool)
    for rows, block in _chunks(X, check):
        r = np.repeat(np.arange(rows.size), np.diff(block.indptr))
        n_det[rows] = np.bincount(r, minlength=rows.size)
        totals[rows] = np.bincount(r, weights=block.data, minlength=rows.size)
        if has_mito:
            w = block.data * is_mito[block.indices]
            mito[rows] = np.bincount(r, weights=w, minlength=rows.size)
        gene_any += np.bincount(block.indices, minlength=n_genes)
        # The cell filters are known per chunk, so the gene filter's counts need no
        # second pass; the plan checks that it decides the same.
        failed = failed_cell_filters(
            n_det[rows], totals[rows], mito[rows] if has_mito else None, settings
        )
        keep = ~np.logical_or.reduce(list(failed.values())) & (n_det[rows] > 0)
        passing[rows] = keep
        gene_in_passing += np.bincount(block.indices[keep[r]], minlength=n_genes)
    return _CellStats(n_det, totals, mito if has_mito else None, gene_any, gene_in_passing, passing)


def _plan_filters(
    stats: _CellStats,
    is_mito: np.ndarray,
    settings: dict[str, Any],
    source: str,
    batches: pd.Categorical | None,
) -> FilterPlan:
    """Steps 1-3 from the statistics of pass 1."""
    plan = FilterPlan.start(stats.n_genes.size, stats.genes_detected.size, batches=batches)
    drop_empty(plan, stats.n_genes > 0, stats.genes_detected > 0, settings, source)
    plan.n_mito_genes = int((is_mito & plan.genes).sum())
    filter_cells(plan, stats.n_genes, stats.totals, stats.mito, settings, source)
    if not np.array_equal(plan.cells, stats.passing):  # the two cell filters disagree
        raise RuntimeError("internal error: streamed cell filter differs from the plan")
    filter_genes(plan, stats.genes_in_passing, settings, source)
    return plan


# ------------------------------------------------------------- pass 2: QC and moments


@dataclass
class _GeneMoments:
    """What pass 2 collects on the genes that passed the gene filter."""

    genes: np.ndarray  # the genes that passed (indices into the input's genes)
    has_counts: np.ndarray  # per input cell: counts in those genes (step 4)
    n_cells: np.ndarray  # per gene: cells it is detected in
    batch_sums: np.ndarray  # batches x genes (one row without batches)
    batch_sumsq: np.ndarray
    obs_qc: list[pd.DataFrame]  # scanpy's obs QC metrics, one frame per chunk

    @property
    def sums(self) -> np.ndarray:
        """Per gene, the sum over all kept cells."""
        return self.batch_sums[0] if len(self.batch_sums) == 1 else self.batch_sums.sum(axis=0)

    @property
    def sumsq(self) -> np.ndarray:
        """Per gene, the sum of squares over all kept cells."""
        if len(self.batch_sumsq) == 1:
            return self.batch_sumsq[0]
        return self.batch_sumsq.sum(axis=0)


def _gene_moments(
    X: H5CSR, plan: FilterPlan, meta: anndata.AnnData, is_mito: np.ndarray
) -> _GeneMoments:
    genes = np.flatnonzero(plan.genes)
    sub_mito = is_mito[genes]
    obs_metrics = []
    codes, n_batches = _batch_codes(plan)
    n_cells_by = np.zeros(genes.size, dtype=np.int64)
    sums = np.zeros(n_batches * genes.size, dtype=np.float64)
    sumsq = np.zeros(n_batches * genes.size, dtype=np.float64)
    has_counts = np.zeros(plan.cells.size, dtype=bool)
    sub_var = pd.DataFrame(index=meta.var_names[genes])
    sub_var["mt"] = sub_mito
    for rows, block in _chunks(X):
        block = block[plan.cells[rows]][:, genes]
        kept_rows = rows[plan.cells[rows]]
        has = np.diff(block.indptr) > 0
        has_counts[kept_rows] = has
        block = block[has]
        kept_rows = kept_rows[has]
        n_cells_by += np.bincount(block.indices, minlength=genes.size)
        # One bin per batch and gene: the row's batch code offsets the gene index.
        entry_batch = np.repeat(codes[kept_rows], np.diff(block.indptr))
        bins = entry_batch * genes.size + block.indices
        sums += np.bincount(bins, weights=block.data, minlength=sums.size)
        sq = (block.data * block.data).astype(np.float64)  # float32 square, as scanpy
        sumsq += np.bincount(bins, weights=sq, minlength=sumsq.size)
        chunk = anndata.AnnData(
            X=block, obs=pd.DataFrame(index=meta.obs_names[kept_rows]), var=sub_var
        )
        qc_obs, _ = sc.pp.calculate_qc_metrics(
            chunk,
            qc_vars=["mt"] if sub_mito.any() else [],
            percent_top=None,
            log1p=False,
            inplace=False,
        )
        obs_metrics.append(qc_obs)
    shape = (n_batches, genes.size)
    return _GeneMoments(
        genes, has_counts, n_cells_by, sums.reshape(shape), sumsq.reshape(shape), obs_metrics
    )


def _batch_codes(plan: FilterPlan) -> tuple[np.ndarray, int]:
    """Each input cell's batch as an integer (0 for all without batches), and the batches."""
    if plan.batches is None:
        return np.zeros(plan.cells.size, dtype=np.int64), 1
    return np.asarray(plan.batches.codes, dtype=np.int64), len(plan.batches.categories)


def _qc_annotations(
    meta: anndata.AnnData,
    plan: FilterPlan,
    is_mito: np.ndarray,
    moments: _GeneMoments,
    mean: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The kept cells' obs and the kept genes' var, with the QC metrics of add_qc_metrics."""
    n_obs = int(plan.cells.sum())
    obs = meta.obs.iloc[np.flatnonzero(plan.cells)].copy()
    var = meta.var.iloc[moments.genes].copy()
    # add_qc_metrics: the mt flag, stale mito columns dropped, scanpy's metrics.
    var["mt"] = is_mito[moments.genes]
    drop_stale_mito_metrics(obs)
    qc = pd.concat(moments.obs_qc)
    for column in qc.columns:
        obs[column] = qc[column].to_numpy()
    var_qc = pd.DataFrame(index=var.index)
    var_qc["n_cells_by_counts"] = moments.n_cells
    var_qc["mean_counts"] = mean
    var_qc["pct_dropout_by_counts"] = (1 - var_qc["n_cells_by_counts"] / n_obs) * 100
    var_qc["total_counts"] = moments.sums.astype(np.float32)
    var[var_qc.columns] = var_qc
    return obs, var


# ---------------------------------------------------------- pass 3: seurat_v3 selection


def _select_hvg(
    X: H5CSR,
    plan: FilterPlan,
    moments: _GeneMoments,
    mean: np.ndarray,
    variance: np.ndarray,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    settings: dict[str, Any],
    source: str,
) -> np.ndarray | None:
    """Step 5: the selected columns of ``genes`` (seurat_v3's columns added to ``var``).

    None when no selection is needed (steps 5 and 6 are recorded as skipped).
    """
    genes = moments.genes
    n_obs = int(plan.cells.sum())
    shape = (n_obs, genes.size)
    if not hvg_needed(settings, genes.size):
        skip_hvg(plan, shape, settings, source)
        return None
    if n_obs != 1:
        variance = variance * n_obs / (n_obs - 1)
    hvg, hvg_var = _seurat_v3(X, plan, moments, mean, variance, obs, settings, source)
    for column in hvg_var.columns:
        var[column] = hvg_var[column].to_numpy()
    hvg_cols = np.flatnonzero(hvg)
    record_hvg(plan, shape, (n_obs, hvg_cols.size), source)
    return hvg_cols


def _seurat_v3(
    X: H5CSR,
    plan: FilterPlan,
    moments: _GeneMoments,
    mean: np.ndarray,
    variance: np.ndarray,
    obs: pd.DataFrame,
    settings: dict[str, Any],
    source: str,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Scanpy's ``highly_variable_genes(flavor="seurat_v3")``, per batch, from moments."""
    genes = moments.genes
    n_top = int(settings["n_top_genes"])
    codes, n_batches = _batch_codes(plan)
    kept_codes = codes[plan.cells]
    n_per_batch = np.bincount(kept_codes, minlength=n_batches)
    present = np.flatnonzero(n_per_batch)  # scanpy loops over the batches that have cells
    trend, failures = {}, {}
    for b in present:
        n_b = int(n_per_batch[b])
        mean_b = moments.batch_sums[b] / n_b
        var_b = (moments.batch_sumsq[b] / n_b - mean_b**2) * n_b / (n_b - 1)
        try:
            fitted = fit_variance_trend(mean_b, var_b)
        except ValueError as err:
            name = None if plan.batches is None else str(plan.batches.categories[b])
            median = float(np.median(obs["total_counts"].to_numpy()[kept_codes == b]))
            failures[name] = (n_b, median, loess_message(err))
            continue
        reg_std = np.sqrt(10**fitted)
        trend[b] = (n_b, mean_b, reg_std, reg_std * np.sqrt(n_b) + mean_b)
    if failures:
        raise hvg_fit_error(source, failures)
    sq_sum = np.zeros((n_batches, genes.size), dtype=np.float64)
    total = np.zeros((n_batches, genes.size), dtype=np.float64)
    for rows, block in _chunks(X):
        kept = plan.cells[rows]
        block = block[kept][:, genes]
        block_codes = codes[rows[kept]]
        for b, (_, _, _, clip_val) in trend.items():
            part = block[block_codes == b] if n_batches > 1 else block
            s2, s1 = _sum_and_sum_squares_clipped(
                part.indices, part.data, n_cols=genes.size, clip_val=clip_val, nnz=part.nnz
            )
            sq_sum[b] += s2
            total[b] += s1
    norm = np.stack(
        [
            (1 / ((n_b - 1) * np.square(reg_std)))
            * ((n_b * np.square(mean_b)) + sq_sum[b] - 2 * total[b] * mean_b)
            for b, (n_b, mean_b, reg_std, _) in trend.items()
        ]
    )
    ranked = np.argsort(np.argsort(-norm, axis=1), axis=1).astype(np.float32)
    n_batches_hv = np.sum((ranked < n_top).astype(int), axis=0)
    ranked[ranked >= n_top] = np.nan
    median_ranked = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df = pd.DataFrame(index=np.arange(genes.size))
    df["highly_variable_nbatches"] = n_batches_hv
    df["highly_variable_rank"] = median_ranked
    df["variances_norm"] = np.mean(norm, axis=0)
    cols = ["highly_variable_rank", "highly_variable_nbatches"]
    order = df[cols].sort_values(cols, ascending=[True, False], na_position="last").index
    hvg = np.zeros(genes.size, dtype=bool)
    hvg[np.asarray(order[:n_top])] = True
    out = pd.DataFrame(
        {
            "highly_variable": hvg,
            "highly_variable_rank": df["highly_variable_rank"].to_numpy(),
            "means": mean,
            "variances": variance,
            "variances_norm": df["variances_norm"].to_numpy().astype("float64", copy=False),
        }
    )
    if plan.batches is not None:  # as scanpy adds it with a batch_key
        out["highly_variable_nbatches"] = n_batches_hv
    return hvg, out


# --------------------------------------------------------------- pass 4: the output


def _write_output(
    output: str | os.PathLike,
    X: H5CSR,
    plan: FilterPlan,
    genes: np.ndarray,
    hvg_cols: np.ndarray | None,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    obsm: dict[str, Any],
    settings: dict[str, Any],
    source: str,
    meta: anndata.AnnData,
    keys: dict[str, Any],
) -> anndata.AnnData:
    """Write the kept cells and genes (step 6 on the way); the result without its counts.

    ``keys`` holds the ``batch_key`` (None without batches) and ``covariate_keys`` to
    record, as :func:`scvae.preprocess.steps.store_record` takes them.
    """
    out_genes = genes if hvg_cols is None else genes[hvg_cols]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmpdir:
        writer = CSRWriter(tmpdir, out_genes.size)
        written = _append_counts(X, plan, out_genes, writer)
        if hvg_cols is not None:
            keep = written[plan.cells]
            drop_cells_without_hvg_counts(plan, keep, out_genes.size, source)
            obs = obs.iloc[np.flatnonzero(keep)]
            var = var.iloc[hvg_cols]
        if plan.batches is not None:
            after = batch_sizes(pd.Categorical(obs[BATCH_KEY]))
            read = batch_sizes(plan.batches)
            check_batch_sizes(after, read, source, "6_drop_empty_after_hvg", warn=False)
        result = anndata.AnnData(obs=_drop_unused_categories(obs), var=_drop_unused_categories(var))
        result.uns["scvae"] = {"input": dict(meta.uns["scvae"]["input"])}
        store_record(result, plan, settings, **keys)
        if hvg_cols is not None:
            result.uns["hvg"] = {"flavor": "seurat_v3"}
        rows_out = np.flatnonzero(written) if hvg_cols is not None else np.flatnonzero(plan.cells)
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
            _write_elements(
                out, result, {k: np.asarray(v)[rows_out] for k, v in obsm.items()}, writer
            )
    return result


def _drop_unused_categories(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without categories that no row has, as anndata's subsetting leaves it."""
    df = df.copy()
    for key in df.columns:
        if isinstance(df[key].dtype, pd.CategoricalDtype):
            df[key] = df[key].cat.remove_unused_categories()
    return df


def _append_counts(
    X: H5CSR, plan: FilterPlan, out_genes: np.ndarray, writer: CSRWriter
) -> np.ndarray:
    """The kept cells' counts in ``out_genes``, less cells with none; the cells written."""
    written = np.zeros(plan.cells.size, dtype=bool)
    for rows, block in _chunks(X):
        block = block[plan.cells[rows]][:, out_genes]
        has = np.diff(block.indptr) > 0
        written[rows[plan.cells[rows]][has]] = True
        writer.append(block[has])
    return written


def _write_elements(
    out: h5py.File, result: anndata.AnnData, obsm: dict[str, np.ndarray], writer: CSRWriter
) -> None:
    """An h5ad file as anndata writes it, with the counts from ``writer``."""
    write_elem(out, "obs", result.obs)
    write_elem(out, "var", result.var)
    write_elem(out, "obsm", obsm)
    for key in ("varm", "obsp", "varp"):
        write_elem(out, key, {})
    write_elem(out, "uns", plain_dicts(result.uns))
    writer.write(out, "X")
    layers = out.create_group("layers")
    layers.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    out["layers"]["counts"] = out["X"]  # a hard link: the counts once on disk
    out.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})


# -------------------------------------------------------------------------- QC plot


def _plot(
    meta: anndata.AnnData,
    stats: _CellStats,
    qc_plot: str | os.PathLike,
    settings: dict[str, Any],
    batch_key: str | None,
) -> None:
    fraction = None if stats.mito is None else mito_fraction(stats.mito, stats.totals)
    plot_qc(
        meta,
        qc_plot,
        thresholds=settings,
        mito_prefix=settings["mito_prefix"],
        cell_metrics=(stats.totals, stats.n_genes, fraction),
        batch_key=batch_key,
    )
