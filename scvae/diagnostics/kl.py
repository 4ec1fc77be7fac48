"""KL per latent dimension and active units: does the posterior move away from the prior.

- :func:`kl_per_dim`: mean ``KL(q(z_d | x) || N(0, 1))`` per latent dimension;
- :func:`posterior_mean_variance` and :func:`active_units` (Burda et al. 2016).
"""

from __future__ import annotations

import numpy as np
import torch

from scvae.module.tensors import ArrayLike, check_loc_scale

__all__ = ["active_units", "kl_per_dim", "posterior_mean_variance"]


def kl_per_dim(loc: ArrayLike, scale: ArrayLike) -> np.ndarray:
    """Mean over cells of ``KL(N(loc, scale^2) || N(0, 1))`` per latent dimension.

    The total KL of the code is the sum of the result.

    Parameters
    ----------
    loc, scale
        Posterior means and standard deviations, shape (cells, n_latent).

    Returns
    -------
    numpy.ndarray
        KL in nats per dimension, shape (n_latent,).
    """
    loc, scale = check_loc_scale(loc, scale)
    kl = 0.5 * (loc.square() + scale.square() - 1.0) - scale.log()
    return kl.mean(0).cpu().numpy()


def posterior_mean_variance(loc: ArrayLike) -> np.ndarray:
    """Variance over cells of the posterior mean of each dimension, ``Var_x E_q[z_d]``.

    Parameters
    ----------
    loc
        Posterior means, shape (cells, n_latent).

    Returns
    -------
    numpy.ndarray
        Population variance (``ddof=0``) per dimension, shape (n_latent,).
    """
    loc = np.asarray(loc.detach().cpu() if isinstance(loc, torch.Tensor) else loc, np.float64)
    if loc.ndim != 2:
        raise ValueError(f"loc must be (cells, n_latent), got shape {loc.shape}")
    return loc.var(axis=0)


def active_units(loc: ArrayLike, threshold: float = 0.01) -> tuple[int, np.ndarray]:
    """Active latent units: dimensions whose posterior mean varies across cells.

    Dimension ``d`` is active when ``Var_x E_q[z_d | x] > threshold`` (Burda et al.
    2016, "Importance weighted autoencoders", section 5.2, with their threshold 0.01).

    Parameters
    ----------
    loc
        Posterior means, shape (cells, n_latent).
    threshold
        Variance above which a dimension counts as active.

    Returns
    -------
    tuple
        ``(count, mask)``: the number of active units and a boolean array (n_latent,).
    """
    mask = posterior_mean_variance(loc) > threshold
    return int(mask.sum()), mask
