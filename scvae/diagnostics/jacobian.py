"""Decoder Jacobian ``d log mu / dz``: does the decoder listen to each latent dimension.

- :func:`decoder_jacobian`: the Jacobian at posterior means, its ``J^T J`` spectrum and
  per-dimension sensitivity;
- :func:`kl_sensitivity_spearman`: whether the dimensions that carry KL are the ones the
  decoder listens to.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy import stats
from torch.func import jvp

from scvae.module.encoding import eval_mode, module_device
from scvae.module.tensors import MAX_ELEMENTS, ArrayLike, Counts, as_float64, as_generator

if TYPE_CHECKING:
    from scvae.module.vae import VAE

__all__ = ["decoder_jacobian", "kl_sensitivity_spearman"]


def _dense_rows(x: Counts | None, rows: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """Rows of a dense tensor/array or a sparse matrix as a float32 tensor."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x[torch.as_tensor(rows, device=x.device)].to(device, torch.float32)
    block = x[rows]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)


def kl_sensitivity_spearman(kl: ArrayLike, sensitivity: ArrayLike) -> float:
    """Spearman rank correlation between per-dimension KL and decoder sensitivity.

    High when the dimensions that carry KL are the ones the decoder listens to. NaN
    when it is undefined (fewer than two dimensions, a constant input, non-finite
    values) instead of a warning.

    Parameters
    ----------
    kl, sensitivity
        One value per latent dimension.

    Returns
    -------
    float
        The correlation in [-1, 1], or NaN.
    """
    a, b = np.asarray(kl, np.float64).ravel(), np.asarray(sensitivity, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"kl and sensitivity differ in length: {a.size} vs {b.size}")
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(a, b).statistic
    return float(rho)


@torch.no_grad()
def decoder_jacobian(
    module: VAE,
    loc: ArrayLike,
    library: ArrayLike,
    x: Counts | None = None,
    *,
    n_cells: int = 500,
    kl: ArrayLike | None = None,
    generator: torch.Generator | int = 0,
    covariates: np.ndarray | None = None,
) -> dict[str, Any]:
    """Jacobian ``J = d log mu / dz`` of the decoder at posterior means.

    For a sample of cells ``i``, ``J_i`` (genes x n_latent) is evaluated at ``z =
    E_q[z | x_i]`` by forward-mode differentiation: one Jacobian-vector product per
    latent basis vector, batched over cells through the decoder's leading sample
    dimension, which is exact and costs about ``n_latent`` forward passes (reverse
    mode would need one backward pass per gene). ``G = mean_i J_i^T J_i`` summarizes
    how far the decoded expression moves per unit of each latent direction. The
    library size only shifts ``log mu`` and so does not enter ``J``; skip-connection
    decoders need the counts ``x``, conditional models the covariate codes: each cell's
    Jacobian is taken at its own covariates. The module is evaluated in evaluation
    mode, so its BatchNorm layers treat the cells independently.

    Parameters
    ----------
    module
        The VAE.
    loc
        Posterior means, shape (cells, n_latent).
    library
        Library sizes, shape (cells,) or (cells, 1) (clamped to >= 1).
    x
        Counts of the same cells (dense or sparse), for skip decoders; else None.
    n_cells
        Cells sampled without replacement (all when there are fewer).
    kl
        Per-dimension KL; when given, ``kl_sensitivity_spearman`` is added.
    generator
        Source of the cell sample.
    covariates
        Covariate codes of the same cells (cells x covariates), for a conditional model.

    Returns
    -------
    dict
        ``jtj`` (n_latent x n_latent array ``G``), ``jtj_eigenvalues`` (descending),
        ``sensitivity_per_dim`` (``diag G``: mean squared norm of ``d log mu / dz_d``),
        ``n_cells``, and ``kl_sensitivity_spearman`` when ``kl`` is given.
    """
    g = as_generator(generator)
    device = module_device(module)
    loc = as_float64(loc)
    n, d = loc.shape
    lib = as_float64(library).reshape(-1, 1).clamp(min=1.0)
    if lib.shape[0] != n:
        raise ValueError(f"library has {lib.shape[0]} cells, loc has {n}")
    rows = np.arange(n)
    if n > n_cells:
        rows = np.sort(torch.randperm(n, generator=g)[:n_cells].numpy())
    dtype = next(module.parameters()).dtype
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    step = max(1, MAX_ELEMENTS // (d * module.n_input))
    basis = torch.eye(d, dtype=dtype, device=device)
    with eval_mode(module):
        for s in range(0, len(rows), step):
            r = rows[s : s + step]
            z = loc[torch.as_tensor(r)].to(device, dtype)
            lib_c = lib[torch.as_tensor(r)].to(device, dtype)
            x_c = _dense_rows(x, r, device)
            if x_c is not None:
                x_c = x_c.to(dtype)
            c_c = None
            if covariates is not None:
                c_c = torch.as_tensor(np.asarray(covariates)[r], dtype=torch.long, device=device)
            # Forward AD refuses expanded (aliased) inputs: materialize the copies.
            z_rep = z.expand(d, -1, -1).contiguous()
            tangents = basis[:, None, :].expand(d, len(r), d).contiguous()

            def log_mu(zz: torch.Tensor, lib_c=lib_c, x_c=x_c, c_c=c_c) -> torch.Tensor:
                return module.generative(zz, lib_c, x_c, c_c)["log_mu"]

            with warnings.catch_warnings():
                # torch's forward AD scripts its decompositions on first use (torch 2.13).
                warnings.filterwarnings(
                    "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
                )
                _, cols = jvp(log_mu, (z_rep,), (tangents,))  # (d, cells, genes)
            cols = cols.double()
            gram += torch.einsum("acg,bcg->ab", cols, cols)
    gram = (gram / len(rows)).cpu()
    eig = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0.0).numpy()
    out = {
        "jtj": gram.numpy(),
        "jtj_eigenvalues": eig,
        "sensitivity_per_dim": torch.diagonal(gram).numpy().copy(),
        "n_cells": len(rows),
    }
    if kl is not None:
        out["kl_sensitivity_spearman"] = kl_sensitivity_spearman(kl, out["sensitivity_per_dim"])
    return out
