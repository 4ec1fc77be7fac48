"""Synthetic single-cell counts with cluster structure, written to h5ad in chunks.

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
from dataclasses import dataclass
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from scvae.data.ondisk import CSRWriter

__all__ = ["BLOCK_CELLS", "SyntheticParams", "synthetic_counts", "write_synthetic_h5ad"]

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
        import numba

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
    from anndata.io import write_elem

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
