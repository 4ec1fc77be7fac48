"""Small tensor helpers: input types, generators, float64 tensors, chunk size.

They sit with the module, below training and the diagnostics, because both estimate
from the encoder's posteriors: the aggressive phase of training stops on the mutual
information (:mod:`scvae.module.aggregate`), the diagnostics measure KL, MI, the IWAE
bound and the decoder's Jacobian with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "LOG_2PI",
    "MAX_ELEMENTS",
    "ArrayLike",
    "Counts",
    "as_float64",
    "as_generator",
    "check_loc_scale",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]
"""Per-cell or per-dimension values: a numpy array, a tensor or a sequence."""
Counts = sp.spmatrix | sp.sparray | np.ndarray | torch.Tensor
"""A cells x genes count matrix, sparse or dense."""

LOG_2PI = math.log(2 * math.pi)
"""``log(2 pi)``, the constant of a Gaussian log density."""

# Elements of the largest temporary of a chunked computation: bounds the memory of the
# MI (float64, cells x cells), the IWAE (K x cells x genes) and the Jacobian
# (n_latent x cells x genes) at a few hundred MB whatever the data size.
MAX_ELEMENTS = 1 << 23
"""Elements of the largest temporary of a chunked diagnostic (2^23)."""


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A CPU generator: the one given, or a fresh one seeded with the int (None: 0).

    Parameters
    ----------
    generator
        A generator (returned as is) or a seed.

    Returns
    -------
    torch.Generator
        The generator to draw from.
    """
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def as_float64(a: ArrayLike) -> torch.Tensor:
    """Detached float64 tensor (on the tensor's device; numpy input goes to the CPU).

    Parameters
    ----------
    a
        Values: a tensor, an array or a sequence.

    Returns
    -------
    torch.Tensor
        The values in float64.
    """
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def check_loc_scale(loc: ArrayLike, scale: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and scales as float64 tensors, checked.

    Parameters
    ----------
    loc, scale
        Posterior means and standard deviations, shape (cells, n_latent).

    Returns
    -------
    tuple
        ``(loc, scale)`` as float64 tensors.

    Raises
    ------
    ValueError
        When the shapes differ or are not 2-D, there are no cells, a mean is not finite
        or a scale is not positive.
    """
    loc, scale = as_float64(loc), as_float64(scale)
    if loc.ndim != 2 or loc.shape != scale.shape:
        raise ValueError(
            f"loc and scale must be (cells, n_latent) arrays of the same shape, got "
            f"{tuple(loc.shape)} and {tuple(scale.shape)}"
        )
    if loc.shape[0] < 1:
        raise ValueError("loc and scale hold no cells")
    if not bool(torch.isfinite(loc).all()) or not bool((scale > 0).all()):
        raise ValueError("loc must be finite and scale positive")
    return loc, scale
