"""Synthetic single-cell counts, written to h5ad in chunks: simulated or resampled.

Two generators:

- :func:`write_synthetic_h5ad` / :func:`synthetic_counts`: negative-binomial clusters
  (below), fast and of any size, but genes are independent within a cluster, so they are
  too easy to judge the quality of an embedding on;
- :func:`write_resampled` / :func:`resample_cells`: new cells made from a real labelled
  file, each a real cell's counts binomially thinned to a random depth, so that the
  gene-gene structure, labels and batches are those of real data (see
  :func:`resample_cells` for the model and its limits).

Simulated clusters
------------------

:func:`write_synthetic_h5ad` writes ``n_cells`` x ``n_genes`` negative-binomial counts
straight into anndata's on-disk sparse format (a ``csr_matrix`` group with ``data``,
``indices`` and ``indptr``) without ever holding the whole matrix, so a million cells
fit on a laptop: memory is one generation block (:data:`BLOCK_CELLS` cells, dense) plus
the labels. :func:`synthetic_counts` returns the same counts in memory for small tests.

The generative model, per cell ``i`` in cluster ``k``:

- gene base abundance ``b_g ~ N(0, gene_sd)``; cluster ``k`` shifts a random
  ``de_fraction`` of the genes by ``lfc_k,g ~ N(0, lfc_sd)``;
  ``rho_k = softmax(b + lfc_k)``;
- library ``l_i ~ LogNormal(log library_size, library_sd)``;
- ``x_ig ~ NB(mean = l_i rho_k,g, inverse dispersion theta_g)`` with
  ``theta_g ~ LogNormal(log theta, 0.5)``, drawn by inverse CDF.

Cells are in random cluster order (``obs["label"]``), as in a real file, so a
contiguous block of rows is a fair sample of the clusters. The defaults give about 10%
non-zero entries and a median of ~950 counts per cell, close to PBMC 4k
(2,000 genes: 10% non-zero, median 895, log gene means with s.d. 2.1).

The draws of cell ``i`` depend only on ``seed`` and on the block of
:data:`BLOCK_CELLS` cells it falls in, so the file does not depend on how it is
written, and the first ``m`` cells of a larger file equal a file of ``m`` cells.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import h5py
import numba
import numpy as np
import pandas as pd
from anndata.io import write_elem
from scipy import sparse

from scvae.data.batches import read_dataset
from scvae.data.checks import check_counts
from scvae.data.ondisk import CSRWriter
from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = [
    "BLOCK_CELLS",
    "DEPTH_FRACTION",
    "SyntheticParams",
    "resample_cells",
    "synthetic_counts",
    "write_resampled",
    "write_synthetic_h5ad",
]

BLOCK_CELLS = 4096
"""Cells drawn per random block (the unit of reproducibility and of memory)."""


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the generative model (see the module docstring)."""

    n_clusters: int = 10
    library_size: float = 1000.0
    library_sd: float = 0.4
    gene_sd: float = 2.0
    de_fraction: float = 0.1
    lfc_sd: float = 1.5
    theta: float = 0.3


class _Model:
    """Per-gene and per-cluster quantities, drawn once from the seed."""

    def __init__(self, n_genes: int, params: SyntheticParams, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        p = params
        base = rng.normal(0.0, p.gene_sd, n_genes)
        lfc = rng.normal(0.0, p.lfc_sd, (p.n_clusters, n_genes))
        lfc *= rng.random((p.n_clusters, n_genes)) < p.de_fraction
        logits = base + lfc
        logits -= logits.max(1, keepdims=True)
        rho = np.exp(logits)
        self.rho = rho / rho.sum(1, keepdims=True)  # (clusters, genes)
        self.theta = np.exp(rng.normal(np.log(p.theta), 0.5, n_genes))
        self.proportions = rng.dirichlet(np.full(p.n_clusters, 5.0))
        self.params = p
        self.seed = seed

    def block(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Counts (n x genes, float32) and labels of the first ``n`` cells of block ``index``.

        The random streams are those of a whole block, whatever ``n``.
        """
        rng = np.random.default_rng([self.seed, 1, index])
        p = self.params
        labels = rng.choice(p.n_clusters, size=BLOCK_CELLS, p=self.proportions)[:n]
        library = np.exp(rng.normal(np.log(p.library_size), p.library_sd, BLOCK_CELLS))[:n]
        mu = library[:, None] * self.rho[labels]
        out = np.empty(mu.shape, dtype=np.float32)
        u = rng.random((BLOCK_CELLS, mu.shape[1]))[:n]
        _nb_kernel()(u, mu, self.theta, out)
        return out, labels


_KERNEL = None


def _nb_kernel():
    """Numba kernel: NB(mean mu, inverse dispersion theta) draws by inverse CDF.

    ``out[i, j]`` is the smallest ``k`` with ``CDF(k) >= u[i, j]``, the CDF summed with
    ``P(k + 1) = P(k) (k + theta) / (k + 1) * mu / (theta + mu)`` from
    ``P(0) = (theta / (theta + mu))^theta``: exact, one uniform per entry, and about twice
    as fast as a gamma-Poisson draw on the mostly-zero entries of a count matrix.
    """
    global _KERNEL
    if _KERNEL is None:

        @numba.njit(cache=True, nogil=True)
        def kernel(u, mu, theta, out):  # pragma: no cover - compiled
            n, g = mu.shape
            for i in range(n):
                for j in range(g):
                    m = mu[i, j]
                    t = theta[j]
                    p = np.exp(t * np.log(t / (t + m)))
                    cdf = p
                    k = 0
                    r = m / (t + m)
                    while cdf < u[i, j]:
                        p = p * (k + t) / (k + 1) * r
                        k += 1
                        cdf += p
                        if p == 0.0 and k > m:  # rounding left the CDF short of u
                            break
                    out[i, j] = k

        _KERNEL = kernel
    return _KERNEL


def _blocks(n_cells: int):
    for index, start in enumerate(range(0, n_cells, BLOCK_CELLS)):
        yield index, start, min(BLOCK_CELLS, n_cells - start)


def _names(prefix: str, n: int) -> pd.Index:
    return pd.Index(np.char.add(prefix, np.arange(n).astype(str)).astype(object))


def _labels(codes: np.ndarray, n_clusters: int) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=[f"c{k}" for k in range(n_clusters)])


def synthetic_counts(
    n_cells: int,
    n_genes: int = 2000,
    *,
    seed: int = 0,
    params: SyntheticParams | None = None,
) -> anndata.AnnData:
    """The counts :func:`write_synthetic_h5ad` writes, as an in-memory AnnData.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the matrix.
    seed
        Seed of every draw.
    params
        Generative-model parameters.

    Returns
    -------
    anndata.AnnData
        ``X``: float32 CSR counts; ``obs["label"]``: the cluster of each cell.
    """
    model = _Model(n_genes, params or SyntheticParams(), seed)
    blocks, codes = [], []
    for index, _, n in _blocks(n_cells):
        x, labels = model.block(index, n)
        blocks.append(sparse.csr_matrix(x))
        codes.append(labels)
    X = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, n_genes))
    obs = pd.DataFrame(index=_names("cell_", n_cells))
    obs["label"] = _labels(np.concatenate(codes), model.params.n_clusters)
    return anndata.AnnData(
        X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=_names("gene_", n_genes))
    )


def write_synthetic_h5ad(
    path: str | os.PathLike,
    n_cells: int,
    n_genes: int = 2000,
    *,
    seed: int = 0,
    params: SyntheticParams | None = None,
    progress: bool = False,
) -> Path:
    """Write synthetic counts to an h5ad file, one block of cells at a time.

    The count matrix is ``X``, a CSR matrix in anndata's on-disk format (``data``
    float32; ``indices`` and ``indptr`` int32, or int64 from 2^31 stored values),
    stored contiguously (no HDF5 chunking or compression, as anndata writes by
    default), so that row ranges read fast. ``anndata.read_h5ad`` (also
    ``backed="r"``) opens the file. The values go through
    :class:`scvae.data.ondisk.CSRWriter`: memory holds one block of cells, the disk twice
    the file's size for a moment.

    Parameters
    ----------
    path
        Destination ``.h5ad`` (written under a temporary name, then renamed).
    n_cells, n_genes
        Shape of the matrix.
    seed
        Seed of every draw; the file is the same for the same seed and shape.
    params
        Generative-model parameters.
    progress
        Print a line per 10% of the cells.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _Model(n_genes, params or SyntheticParams(), seed)
    codes = np.empty(n_cells, dtype=np.int64)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmpdir:
        writer = CSRWriter(tmpdir, n_genes)
        step = max(1, n_cells // 10)
        for index, start, n in _blocks(n_cells):
            x, labels = model.block(index, n)
            codes[start : start + n] = labels
            writer.append(sparse.csr_matrix(x))
            if progress and (start + n) // step > start // step:
                print(f"  {start + n:,} / {n_cells:,} cells", flush=True)
        tmp_h5 = Path(tmpdir) / "out.h5ad"
        with h5py.File(tmp_h5, "w") as f:
            obs = pd.DataFrame(index=_names("cell_", n_cells))
            obs["label"] = _labels(codes, model.params.n_clusters)
            write_elem(f, "obs", obs)
            write_elem(f, "var", pd.DataFrame(index=_names("gene_", n_genes)))
            for key in ("obsm", "varm", "obsp", "varp", "layers"):
                write_elem(f, key, {})
            write_elem(
                f,
                "uns",
                {"synthetic": {"seed": seed, "n_clusters": model.params.n_clusters}},
            )
            writer.write(f, "X")
            f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        os.replace(tmp_h5, path)
    return path


# ------------------------------------------------------------------ resampled real cells

DEPTH_FRACTION = (0.5, 1.0)
"""Default range of the thinning fraction of :func:`resample_cells` (log-uniform)."""

# Source values thinned per block: bounds the temporaries (about 24 bytes per value) and
# fixes the order of the random draws, so the file equals the in-memory result.
RESAMPLE_BLOCK_NNZ = 1 << 22


@dataclass(frozen=True)
class _ResamplePlan:
    """The source cell and thinning fraction of every new cell, drawn before any count."""

    source: np.ndarray  # (n_cells,) int64 rows of the source
    fraction: np.ndarray  # (n_cells,) float64 in DEPTH_FRACTION


def _check_depth(depth: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in depth)
    except (TypeError, ValueError) as err:
        raise InputError(f"depth must be two numbers (low, high); got {depth!r}.") from err
    if not (0.0 < lo <= hi <= 1.0):
        raise InputError(
            f"depth={depth!r}: the thinning fractions must satisfy 0 < low <= high <= 1. A "
            "fraction above 1 would add counts that no molecule was captured for; to make "
            "deeper cells, start from a deeper source."
        )
    return lo, hi


def _plan(
    n_source: int, n_cells: int, depth: tuple[float, float], rng: np.random.Generator
) -> _ResamplePlan:
    # Each source cell is used floor(n/N) or ceil(n/N) times (the extra uses drawn
    # without replacement), in random order: label and batch proportions are those of
    # the source up to one cell per source cell, and no source cell is left out when
    # n >= N (plain sampling with replacement misses e^-n/N of them).
    repeats, extra = divmod(n_cells, n_source)
    source = np.concatenate(
        [np.repeat(np.arange(n_source), repeats), rng.choice(n_source, extra, replace=False)]
    )
    source = rng.permutation(source)
    lo, hi = depth
    fraction = np.exp(rng.uniform(np.log(lo), np.log(hi), n_cells))
    return _ResamplePlan(source=source.astype(np.int64), fraction=fraction)


def _thinned_blocks(counts: sparse.csr_matrix, plan: _ResamplePlan, rng: np.random.Generator):
    """Yield ``(start, block)``: the new cells' counts, float32 CSR, in order."""
    n_cells = plan.source.size
    per_row = counts.nnz / max(counts.shape[0], 1)
    step = max(1, int(RESAMPLE_BLOCK_NNZ / max(per_row, 1.0)))
    for start in range(0, n_cells, step):
        rows = plan.source[start : start + step]
        block = counts[rows]
        p = np.repeat(plan.fraction[start : start + step], np.diff(block.indptr))
        # Binomial(x, f) per stored count: each of a cell's molecules kept with
        # probability f, independently (a lower capture rate of the same cell).
        data = rng.binomial(block.data.astype(np.int64), p).astype(np.float32)
        out = sparse.csr_matrix((data, block.indices, block.indptr), shape=block.shape)
        out.eliminate_zeros()
        yield start, out


def _source_counts(source: Any, layer: str | None) -> tuple[sparse.csr_matrix, pd.DataFrame]:
    """The counts (float32 CSR, sorted indices) and obs of an AnnData or a matrix."""
    if isinstance(source, anndata.AnnData):
        if layer is not None and layer not in source.layers:
            raise InputError(
                f"layer {layer!r} is not in the AnnData; its layers are "
                f"{list(source.layers) or 'none'}."
            )
        X = source.X if layer is None else source.layers[layer]
        obs = source.obs
        what = "X" if layer is None else f"layers[{layer!r}]"
    else:
        if layer is not None:
            raise InputError("layer= applies to an AnnData source, not to a matrix.")
        X, obs, what = source, None, "the source matrix"
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
        raise InputError(
            f"{what} is a {type(X).__name__}; resampling needs the counts in memory "
            "(a scipy sparse matrix or a NumPy array)."
        )
    check_counts(X, source=what)
    counts = sparse.csr_matrix(X, dtype=np.float32)
    counts.sum_duplicates()  # sorted indices, as a CSR file must have them
    if obs is None:
        obs = pd.DataFrame(index=_names("cell_", counts.shape[0]))
    return counts, obs


def _inherited_obs(
    obs: pd.DataFrame, plan: _ResamplePlan, obs_keys: Sequence[str] | None
) -> pd.DataFrame:
    """The obs of the new cells: the kept source columns, ``source_cell`` and ``depth_fraction``."""
    if obs_keys is None:
        # Numeric columns are mostly per-cell summaries of the counts (n_counts,
        # n_genes) that thinning makes wrong; labels, batches and other categories hold.
        obs_keys = [
            k
            for k in obs.columns
            if not (
                pd.api.types.is_numeric_dtype(obs[k]) and not pd.api.types.is_bool_dtype(obs[k])
            )
        ]
    missing = [k for k in obs_keys if k not in obs.columns]
    if missing:
        raise InputError(
            f"obs_keys {missing} are not obs columns of the source; its columns are "
            f"{list(obs.columns) or 'none'}."
        )
    new = pd.DataFrame(index=_names("cell_", plan.source.size))
    for key in obs_keys:
        if key in ("source_cell", "depth_fraction"):
            continue  # a resampled source: these are recomputed below
        values = obs[key]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy()
            new[key] = pd.Categorical.from_codes(codes[plan.source], dtype=values.dtype)
        elif values.dtype == object or pd.api.types.is_string_dtype(values):
            # As categories, so that a million copies of a few strings stay small.
            codes, uniques = pd.factorize(values)
            new[key] = pd.Categorical.from_codes(codes[plan.source], categories=uniques)
        else:
            new[key] = values.to_numpy()[plan.source]
    names = pd.Index(obs.index.astype(str))
    if not names.is_unique:
        raise InputError(
            "the source's cell names (obs_names) are not unique, so obs['source_cell'] "
            "could not name the source cell; call adata.obs_names_make_unique() first."
        )
    new["source_cell"] = pd.Categorical.from_codes(plan.source, categories=names)
    new["depth_fraction"] = plan.fraction.astype(np.float32)
    return new


def _resample_setup(
    source: Any,
    n_cells: int,
    depth: tuple[float, float],
    rng: np.random.Generator | int,
    layer: str | None,
    obs_keys: Sequence[str] | None,
) -> tuple[sparse.csr_matrix, _ResamplePlan, pd.DataFrame, np.random.Generator]:
    """Check the arguments, then draw the plan and the new cells' obs."""
    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 1:
        raise InputError(f"n_cells must be a positive integer; got {n_cells!r}.")
    depth = _check_depth(depth)
    counts, obs = _source_counts(source, layer)
    rng = np.random.default_rng(rng)
    plan = _plan(counts.shape[0], int(n_cells), depth, rng)
    return counts, plan, _inherited_obs(obs, plan, obs_keys), rng


def _resample_record(
    counts: sparse.csr_matrix, depth: tuple[float, float], rng: np.random.Generator | int
) -> dict[str, Any]:
    """``uns["resampled"]``: how the cells were made (h5ad-serializable values only)."""
    record: dict[str, Any] = {
        "n_source_cells": int(counts.shape[0]),
        "depth_fraction": np.asarray(depth, dtype=np.float64),
        "distribution": "log-uniform",
    }
    if not isinstance(rng, np.random.Generator):
        record["seed"] = int(rng)
    return record


def resample_cells(
    source: anndata.AnnData | sparse.spmatrix | sparse.sparray | np.ndarray,
    n_cells: int,
    *,
    depth: tuple[float, float] = DEPTH_FRACTION,
    rng: np.random.Generator | int = 0,
    layer: str | None = None,
    obs_keys: Sequence[str] | None = None,
) -> anndata.AnnData:
    """New cells made from real ones: each a source cell's counts thinned to a lower depth.

    Every new cell ``i`` copies a source cell ``s(i)`` and keeps each of its molecules
    with probability ``f_i``: ``x_ig ~ Binomial(c_s(i),g, f_i)``.

    - **Source cells.** Each source cell is used ``floor(n_cells / N)`` or
      ``ceil(n_cells / N)`` times (the remaining uses drawn without replacement), in a
      random order. Label and batch proportions therefore equal the source's (up to
      one cell per source cell), every source cell is used when ``n_cells >= N``, and
      ``n_cells < N`` is a subsample without replacement. A contiguous block of rows is
      a fair sample of the whole.
    - **Depth.** ``f_i`` is log-uniform on ``depth`` (default :data:`DEPTH_FRACTION`,
      0.5 to 1, mean 0.72): depth acts multiplicatively, so the new cells spread evenly
      on a log scale around their source's depth, at most 2-fold lower. ``f <= 1``:
      thinning only removes counts, it never invents them.

    Why thinning. Binomial thinning is what a lower capture rate does to a cell: a
    Poisson or negative-binomial count of mean ``mu`` becomes one of mean ``f mu`` with
    the same dispersion, and gene-gene covariances scale by ``f^2``. So the new cells
    keep the real biology (cell types, gene programs, batch effects) with fresh
    technical noise. Upsampling, by contrast, would have to draw counts from an
    estimated profile and would smooth out the structure it is meant to keep.

    Limits: there are only ``N`` distinct biological states. At ``n_cells >> N`` each
    source cell has ``n_cells / N`` noisy copies, which are each other's nearest
    neighbours; kNN graphs and clusterings then find copies before cell types, so
    judge embeddings by label scores, not by how tight the clusters look.

    Parameters
    ----------
    source
        Raw integer counts (cells x genes): an AnnData (its ``X``, or ``layers[layer]``)
        or a scipy sparse matrix or NumPy array.
    n_cells
        Number of new cells.
    depth
        ``(low, high)``, ``0 < low <= high <= 1``: range of the thinning fraction
        ``f_i`` (log-uniform; ``low == high`` thins every cell by that fraction).
    rng
        A :class:`numpy.random.Generator` (its state advances) or an integer seed. The
        result depends only on it, the source and the arguments.
    layer
        Layer of an AnnData source that holds the counts; None uses ``X``.
    obs_keys
        obs columns of the source the new cells inherit. None: every column that is
        not numeric (labels, batches, other categories; numeric columns are mostly
        count summaries such as ``n_counts`` that thinning makes wrong). Name numeric
        columns here to keep them anyway.

    Returns
    -------
    anndata.AnnData
        ``X``: the new counts, float32 CSR, and ``layers["counts"]`` a copy; ``var``
        that of the source (empty for a matrix); ``obs``: the inherited columns
        (object columns as categoricals), ``obs["source_cell"]`` (the source's cell
        name, categorical) and ``obs["depth_fraction"]`` (``f_i``, float32);
        ``uns["resampled"]``: ``n_source_cells``, ``depth_fraction`` (the range),
        ``distribution`` and ``seed`` (when ``rng`` is an integer).

    Raises
    ------
    InputError
        If the source does not hold raw counts, a layer or obs key is missing, the
        source's cell names are not unique, or ``n_cells`` or ``depth`` is invalid.

    See Also
    --------
    write_resampled : the same cells written to an h5ad file block by block.
    """
    counts, plan, obs, gen = _resample_setup(source, n_cells, depth, rng, layer, obs_keys)
    blocks = [block for _, block in _thinned_blocks(counts, plan, gen)]
    X = sparse.vstack(blocks, format="csr").astype(np.float32)
    var = source.var.copy() if isinstance(source, anndata.AnnData) else None
    adata = anndata.AnnData(
        X=X,
        obs=obs,
        var=var if var is not None else pd.DataFrame(index=_names("gene_", X.shape[1])),
    )
    adata.layers["counts"] = X.copy()
    adata.uns["resampled"] = _resample_record(counts, _check_depth(depth), rng)
    return adata


def write_resampled(
    source: str | os.PathLike | anndata.AnnData,
    path: str | os.PathLike,
    n_cells: int,
    *,
    depth: tuple[float, float] = DEPTH_FRACTION,
    rng: np.random.Generator | int = 0,
    label_key: str | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    obs_keys: Sequence[str] | None = None,
    progress: bool = False,
) -> Path:
    """Write :func:`resample_cells` of a real file to an h5ad file, one block at a time.

    Memory holds the source, the plan (12 bytes per new cell), obs and one block of
    new cells (:data:`RESAMPLE_BLOCK_NNZ` source values), never the new matrix: 10^6
    cells of a 2,000-gene file fit in well under 1 GiB. ``X`` is a CSR matrix in
    anndata's on-disk format, written contiguously by
    :class:`scvae.data.ondisk.CSRWriter` (as :func:`write_synthetic_h5ad`), and
    ``layers["counts"]`` is a hard link to it (stored once, read as a second matrix),
    as the preprocessing stage writes it. The file is written under a temporary name
    and renamed when complete (:func:`scvae.utils.atomic.atomic_path`); the disk holds
    the values twice for a moment. The file equals ``resample_cells`` of the same
    source and arguments.

    Parameters
    ----------
    source
        A count file (any format :func:`scvae.data.read_dataset` reads) or an AnnData
        already read.
    path
        Destination ``.h5ad``.
    n_cells, depth, rng, layer, obs_keys
        As :func:`resample_cells`.
    label_key, batch_key
        For a file: the obs columns holding the labels (copied to ``obs["label"]``)
        and the batches (copied to ``obs["batch"]``), as the workflow reads them.
    progress
        Print the cells written so far, after each block that passes a tenth of them.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        As :func:`resample_cells` and :func:`scvae.data.read_dataset`.
    OutputError
        If the file cannot be written (the message names it).
    """
    path = Path(path)
    if isinstance(source, anndata.AnnData):
        if label_key is not None or batch_key is not None:
            raise InputError(
                "label_key and batch_key apply to a source file; an AnnData source keeps "
                "its obs columns as they are."
            )
        adata, origin = source, source.uns.get("scvae", {}).get("input", {}).get("path")
    else:
        adata = read_dataset(source, label_key=label_key, batch_key=batch_key, layer=layer)
        origin, layer = str(source), None  # read_dataset put the counts in X
    counts, plan, obs, gen = _resample_setup(adata, n_cells, depth, rng, layer, obs_keys)
    record = _resample_record(counts, _check_depth(depth), rng)
    if origin:
        record["source"] = str(origin)
    step = max(1, n_cells // 10)
    with (
        atomic_path(path) as tmp,
        tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmpdir,
    ):
        writer = CSRWriter(tmpdir, counts.shape[1])
        for start, block in _thinned_blocks(counts, plan, gen):
            writer.append(block)
            done = start + block.shape[0]
            if progress and done // step > start // step:
                print(f"  {done:,} / {n_cells:,} cells", flush=True)
        with h5py.File(tmp, "w") as f:
            write_elem(f, "obs", obs)
            write_elem(f, "var", adata.var)
            for key in ("obsm", "varm", "obsp", "varp", "layers"):
                write_elem(f, key, {})
            write_elem(f, "uns", {"resampled": record})
            writer.write(f, "X")
            f["layers"]["counts"] = f["X"]
            f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    return path
