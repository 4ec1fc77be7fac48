"""Preprocessing of an h5ad file too large for memory: the same steps, streamed.

:func:`preprocess_h5ad_backed` gives the output of :func:`scvae.data.readers.read_counts` +
:func:`scvae.preprocess.memory.preprocess` + :func:`scvae.data.readers.write_h5ad` (the workflow's
preprocess stage) for an h5ad input whose counts are a CSR matrix (``X`` or a layer),
reading the counts in chunks of rows and writing the result chunk by chunk: memory
holds one chunk, per-cell and per-gene statistics and obs/var, never the matrix.

Four passes over the file:

1. per cell: detected genes, total and mitochondrial counts (cell filters); per gene:
   detection in any cell and in the cells that pass (gene filters);
2. on the genes that pass: the QC metrics of obs (``sc.pp.calculate_qc_metrics`` on
   each chunk), cells left with no counts, per-gene sums and sums of squares (var QC
   metrics, means and variances of seurat_v3);
3. seurat_v3's clipped sums (after its loess fit of the variances on the means);
4. the selected cells and genes, written to the output.

Selected cells and genes, counts, obs, obsm, uns and the recorded steps are those of
the in-memory path; the floating-point var columns (``means``, ``variances``,
``variances_norm``, ``mean_counts``, ``total_counts``) agree to rounding (sums are
accumulated per chunk in float64; ``tests/test_scale.py`` compares the two). ``X`` and
``layers["counts"]`` are the same HDF5 group (a hard link), so the counts are on disk
once; reading the file into memory gives two copies, as the in-memory path's output
does.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from scvae.data.ondisk import H5CSR, CSRWriter, row_chunks
from scvae.data.readers import _labels_from_column, _make_names_unique, _plain_dicts, check_counts
from scvae.errors import InputError
from scvae.preprocess.memory import (
    _apply_cell_filters,
    _hvg_needed,
    _log_removed,
    _Plan,
    _record_step,
    _require_hvg_backend,
    _require_nonempty,
    _store_record,
    _validate_settings,
    effective_settings,
    mito_genes,
)
from scvae.utils.atomic import atomic_path

__all__ = ["preprocess_h5ad_backed"]

logger = logging.getLogger(__name__)


def _chunks(X: H5CSR):
    """``(rows, chunk)`` with the in-memory reader's cleaning (float32, no duplicates or zeros)."""
    for rows, block in row_chunks(X):
        block = sparse.csr_matrix(block, dtype=np.float32)
        block.sum_duplicates()
        block.eliminate_zeros()
        yield rows, block


def _open_counts(path: Path, layer: str | None) -> tuple[h5py.File, H5CSR, str | None]:
    f = h5py.File(path, "r")
    key = "X" if layer is None else f"layers/{layer}"
    hint = None
    if layer is None and "layers" in f:
        names = ", ".join(repr(k) for k in f["layers"]) or "none"
        hint = f"Layers in this file: {names} (pass layer=<name> to read one)."
    if key not in f:
        names = ", ".join(repr(k) for k in f["layers"]) if "layers" in f else ""
        f.close()
        what = "no X matrix." if layer is None else f"no layer {layer!r};"
        raise InputError(
            f"{path}: has {what} Layers in this file: {names or 'none'} (pass layer=<name> "
            "to read one)."
        )
    return f, H5CSR(f[key]), hint


def preprocess_h5ad_backed(
    input: str | os.PathLike,
    output: str | os.PathLike,
    qc_plot: str | os.PathLike | None = None,
    *,
    label_key: str | None = None,
    layer: str | None = None,
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
    **filter_settings
        :data:`scvae.preprocess.memory.FILTER_SETTINGS` (defaults as :func:`preprocess`).

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
    from anndata.io import read_elem, write_elem

    path = Path(input)
    settings = _validate_settings(**effective_settings(**filter_settings))
    source = str(path)
    f, X, hint = _open_counts(path, layer)
    try:
        obs = read_elem(f["obs"])
        var = read_elem(f["var"])
        obsm = dict(read_elem(f["obsm"])) if "obsm" in f else {}
        n_cells, n_genes = X.shape
        if n_cells == 0 or n_genes == 0:
            check_counts(sparse.csr_matrix((n_cells, n_genes)), source=source)
        # The reader's checks and names, as read_counts does them.
        meta = anndata.AnnData(obs=obs, var=var)
        meta.uns["scvae"] = {"input": {"path": str(path), "format": "h5ad"}}
        _make_names_unique(meta, path)
        if label_key is not None:
            meta.obs["label"] = _labels_from_column(meta.obs, label_key, path)
        is_mito = mito_genes(meta, settings["mito_prefix"])

        # Pass 1: per-cell statistics and the cell filters; per-gene detection.
        n_det = np.zeros(n_cells, dtype=np.float64)
        totals = np.zeros(n_cells, dtype=np.float64)
        mito = np.zeros(n_cells, dtype=np.float64)
        gene_any = np.zeros(n_genes, dtype=np.float64)
        gene_in_passing = np.zeros(n_genes, dtype=np.float64)
        cells_step2 = np.zeros(n_cells, dtype=bool)
        n_mito_any = bool(is_mito.any())
        for rows, block in _chunks(X):
            check_counts(block, source=source, hint=hint)
            r = np.repeat(np.arange(rows.size), np.diff(block.indptr))
            n_det[rows] = np.bincount(r, minlength=rows.size)
            totals[rows] = np.bincount(r, weights=block.data, minlength=rows.size)
            if n_mito_any:
                w = block.data * is_mito[block.indices]
                mito[rows] = np.bincount(r, weights=w, minlength=rows.size)
            gene_any += np.bincount(block.indices, minlength=n_genes)
            keep = _cell_filter(n_det[rows], totals[rows], mito[rows], settings, n_mito_any) & (
                n_det[rows] > 0
            )
            cells_step2[rows] = keep
            gene_in_passing += np.bincount(block.indices[keep[r]], minlength=n_genes)

        if qc_plot is not None:  # before filtering, as the in-memory path: it explains them
            _plot(meta, totals, n_det, mito if n_mito_any else None, qc_plot, settings)

        plan = _Plan(cells=np.ones(n_cells, dtype=bool), genes=np.ones(n_genes, dtype=bool))
        plan.steps["0_input"] = {"cells": n_cells, "genes": n_genes}
        before = plan.shape
        plan.cells &= n_det > 0
        plan.genes &= gene_any > 0
        plan.step("1_drop_empty", before)
        _log_removed(source, "with no counts", before, plan.shape)
        _require_nonempty(plan, source, "1_drop_empty", settings, before)
        plan.n_mito_genes = int((is_mito & plan.genes).sum())
        _apply_cell_filters(plan, n_det, totals, mito, settings, source)
        if not np.array_equal(plan.cells, cells_step2):  # the two cell filters disagree
            raise RuntimeError("internal error: streamed cell filter differs from the plan")
        before = plan.shape
        plan.genes &= gene_in_passing >= max(settings["min_cells"], 1)
        plan.step("3_filter_genes", before)
        logger.info(
            "%s: min_cells=%d removed %d of %d genes",
            source,
            settings["min_cells"],
            before[1] - plan.shape[1],
            before[1],
        )
        _require_nonempty(plan, source, "3_filter_genes", settings, before)

        # Pass 2: on the genes that pass, QC metrics and seurat_v3's moments.
        genes = np.flatnonzero(plan.genes)
        sub_mito = is_mito[genes]
        obs_metrics = []
        n_cells_by = np.zeros(genes.size, dtype=np.int64)
        sums = np.zeros(genes.size, dtype=np.float64)
        sumsq = np.zeros(genes.size, dtype=np.float64)
        cells_step4 = np.zeros(n_cells, dtype=bool)
        sub_var = pd.DataFrame(index=meta.var_names[genes])
        sub_var["mt"] = sub_mito
        for rows, block in _chunks(X):
            block = block[plan.cells[rows]][:, genes]
            kept_rows = rows[plan.cells[rows]]
            has = np.diff(block.indptr) > 0
            cells_step4[kept_rows] = has
            block = block[has]
            kept_rows = kept_rows[has]
            n_cells_by += np.bincount(block.indices, minlength=genes.size)
            sums += np.bincount(block.indices, weights=block.data, minlength=genes.size)
            sq = (block.data * block.data).astype(np.float64)  # float32 square, as scanpy
            sumsq += np.bincount(block.indices, weights=sq, minlength=genes.size)
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
        before = plan.shape
        plan.cells &= cells_step4
        plan.step("4_drop_empty_after_filters", before)
        _log_removed(source, "left with no counts by the gene filter", before, plan.shape)
        _require_nonempty(plan, source, "4_drop_empty_after_filters", settings, before)
        _require_hvg_backend(settings, int(plan.genes.sum()))
        n_obs = int(plan.cells.sum())

        obs_out = meta.obs.iloc[np.flatnonzero(plan.cells)].copy()
        var_out = meta.var.iloc[genes].copy()
        # add_qc_metrics: the mt flag, stale mito columns dropped, scanpy's metrics.
        var_out["mt"] = sub_mito
        for stale in ("total_counts_mt", "pct_counts_mt"):
            if stale in obs_out:
                del obs_out[stale]
        qc = pd.concat(obs_metrics)
        for column in qc.columns:
            obs_out[column] = qc[column].to_numpy()
        mean = sums / n_obs
        variance = sumsq / n_obs - mean**2
        var_qc = pd.DataFrame(index=var_out.index)
        var_qc["n_cells_by_counts"] = n_cells_by
        var_qc["mean_counts"] = mean
        var_qc["pct_dropout_by_counts"] = (1 - var_qc["n_cells_by_counts"] / n_obs) * 100
        var_qc["total_counts"] = sums.astype(np.float32)
        var_out[var_qc.columns] = var_qc

        # seurat_v3 (pass 3), or not needed.
        plan_steps_shape = (n_obs, genes.size)
        hvg_cols = np.arange(genes.size)
        uns_hvg = None
        if _hvg_needed(settings, genes.size):
            if n_obs != 1:
                variance = variance * n_obs / (n_obs - 1)
            hvg, hvg_var = _seurat_v3(X, plan, genes, mean, variance, n_obs, settings)
            for column in hvg_var.columns:
                var_out[column] = hvg_var[column].to_numpy()
            hvg_cols = np.flatnonzero(hvg)
            uns_hvg = {"flavor": "seurat_v3"}
            _record_step(
                plan,
                "5_highly_variable_genes",
                plan_steps_shape,
                (n_obs, hvg_cols.size),
                hvg="seurat_v3",
            )
            logger.info(
                "%s: kept %d highly variable genes of %d (seurat_v3)",
                source,
                hvg_cols.size,
                genes.size,
            )
        else:
            n_top = settings["n_top_genes"]
            note = (
                "skipped: n_top_genes is None"
                if n_top is None
                else f"skipped: {genes.size} genes <= n_top_genes={n_top}"
            )
            logger.info("%s: highly variable genes %s", source, note)
            _record_step(
                plan, "5_highly_variable_genes", plan_steps_shape, plan_steps_shape, hvg=note
            )
        out_genes = genes[hvg_cols]

        # Pass 4: write the selected cells and genes; cells with no counts in them go.
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmpdir:
            writer = CSRWriter(tmpdir, out_genes.size)
            written = np.zeros(n_cells, dtype=bool)
            for rows, block in _chunks(X):
                block = block[plan.cells[rows]][:, out_genes]
                has = np.diff(block.indptr) > 0
                written[rows[plan.cells[rows]][has]] = True
                writer.append(block[has])
            after_hvg = (n_obs, out_genes.size)
            if uns_hvg is not None:
                if not written.any():
                    raise InputError(
                        f"{source}: no cell has counts in the {out_genes.size} highly "
                        "variable genes."
                    )
                keep = written[plan.cells]
                obs_out = obs_out.iloc[np.flatnonzero(keep)]
                final = (int(keep.sum()), out_genes.size)
                _record_step(plan, "6_drop_empty_after_hvg", after_hvg, final)
                _log_removed(
                    source, "with no counts in the highly variable genes", after_hvg, final
                )
                var_out = var_out.iloc[hvg_cols]
            else:
                _record_step(plan, "6_drop_empty_after_hvg", after_hvg, after_hvg)
            result = anndata.AnnData(obs=obs_out, var=var_out)
            result.uns["scvae"] = {"input": {"path": str(path), "format": "h5ad"}}
            _store_record(result, plan, settings)
            if uns_hvg is not None:
                result.uns["hvg"] = uns_hvg
            rows_out = (
                np.flatnonzero(written) if uns_hvg is not None else np.flatnonzero(plan.cells)
            )
            with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
                write_elem(out, "obs", result.obs)
                write_elem(out, "var", result.var)
                write_elem(out, "obsm", {k: np.asarray(v)[rows_out] for k, v in obsm.items()})
                for key in ("varm", "obsp", "varp"):
                    write_elem(out, key, {})
                write_elem(out, "uns", _plain_dicts(result.uns))
                writer.write(out, "X")
                layers = out.create_group("layers")
                layers.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
                out["layers"]["counts"] = out["X"]  # a hard link: the counts once on disk
                out.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        logger.info(
            "Preprocessing %s (out of core): %d cells x %d genes -> %d cells x %d genes",
            source,
            n_cells,
            n_genes,
            *result.shape,
        )
        return result.uns["scvae"]["preprocess"]
    finally:
        f.close()


def _cell_filter(n_det, totals, mito, settings, has_mito) -> np.ndarray:
    ok = n_det >= settings["min_genes"]
    if settings["min_counts"] is not None:
        ok &= totals >= settings["min_counts"]
    if settings["max_counts"] is not None:
        ok &= totals <= settings["max_counts"]
    if settings["max_mito_fraction"] is not None and has_mito:
        fraction = np.divide(mito, totals, out=np.zeros_like(mito), where=totals > 0)
        ok &= fraction <= settings["max_mito_fraction"]
    return ok


def _seurat_v3(X, plan, genes, mean, variance, n_obs, settings) -> tuple[np.ndarray, pd.DataFrame]:
    """Scanpy's ``highly_variable_genes(flavor="seurat_v3")`` (one batch) from moments."""
    from scanpy.preprocessing._highly_variable_genes import _sum_and_sum_squares_clipped
    from skmisc.loess import loess

    n_top = int(settings["n_top_genes"])
    not_const = variance > 0
    estimat_var = np.zeros(genes.size, dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(variance[not_const]), span=0.3, degree=2)
    model.fit()
    estimat_var[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimat_var)
    clip_val = reg_std * np.sqrt(n_obs) + mean
    sq_sum = np.zeros(genes.size, dtype=np.float64)
    total = np.zeros(genes.size, dtype=np.float64)
    for rows, block in _chunks(X):
        block = block[plan.cells[rows]][:, genes]
        s2, s1 = _sum_and_sum_squares_clipped(
            block.indices, block.data, n_cols=genes.size, clip_val=clip_val, nnz=block.nnz
        )
        sq_sum += s2
        total += s1
    norm_gene_var = (1 / ((n_obs - 1) * np.square(reg_std))) * (
        (n_obs * np.square(mean)) + sq_sum - 2 * total * mean
    )
    norm = norm_gene_var.reshape(1, -1)
    ranked = np.argsort(np.argsort(-norm, axis=1), axis=1).astype(np.float32)
    n_batches = np.sum((ranked < n_top).astype(int), axis=0)
    ranked[ranked >= n_top] = np.nan
    median_ranked = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df = pd.DataFrame(index=np.arange(genes.size))
    df["highly_variable_nbatches"] = n_batches
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
    return hvg, out


def _plot(meta, totals, n_det, mito, qc_plot, settings) -> None:
    from scvae.plotting.qc import plot_qc

    fraction = None
    if mito is not None:
        fraction = np.divide(mito, totals, out=np.zeros_like(mito), where=totals > 0)
    plot_qc(
        meta,
        qc_plot,
        thresholds=settings,
        mito_prefix=settings["mito_prefix"],
        cell_metrics=(totals, n_det, fraction),
    )
