"""Mutual information ``I(x; z)`` under the aggregate posterior of a cell set.

:func:`mutual_information` reports it jointly and per dimension (Hoffman & Johnson
2016; He et al. 2019) with the KL decomposition. The estimate is that of
:func:`scvae.module.aggregate.aggregate_mi`, the one the aggressive phase of training
stops on; noise is drawn on the CPU from the ``generator`` given, so the numbers do not
depend on the device and the global random state is untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from scvae.diagnostics.kl import kl_per_dim
from scvae.module.aggregate import N_EVAL, aggregate_mi
from scvae.module.tensors import ArrayLike

__all__ = ["mutual_information"]


def mutual_information(
    loc: ArrayLike,
    scale: ArrayLike,
    *,
    n_eval: int = N_EVAL,
    n_samples: int | None = None,
    n_samples_per_dim: int = 1000,
    generator: torch.Generator | int = 0,
) -> dict[str, Any]:
    """Mutual information ``I(x; z)`` between cells and codes, jointly and per dimension.

    With ``x`` uniform over a set of ``N`` cells and the aggregate posterior
    ``q(z) = (1/N) sum_j q(z | x_j)``,

    ``E_x[KL(q(z|x) || p(z))] = I(x; z) + KL(q(z) || p(z))``

    (Hoffman & Johnson 2016, "ELBO surgery"). The expected KL is exact (analytic per
    cell). The MI is estimated by Monte Carlo (:func:`scvae.module.aggregate.aggregate_mi`,
    which also lists where it deviates from He et al. 2019); ``KL(q(z) || p(z))`` is the
    expected KL minus that MI, so the identity above holds exactly and the aggregate KL
    uses the analytic expected KL as a control variate.

    Parameters
    ----------
    loc, scale
        Posterior means and standard deviations, shape (cells, n_latent).
    n_eval
        Cells defining the aggregate posterior; a random subset when there are more.
    n_samples
        Monte Carlo draws of the joint estimate (None: one per evaluation cell).
    n_samples_per_dim
        Draws of the per-dimension estimates (the first draws of the joint ones); their
        cost is ``n_latent`` times that of a joint draw.
    generator
        Source of the cell subset and the draws.

    Returns
    -------
    dict
        ``mi``, ``mi_stderr`` (Monte Carlo standard error), ``kl_mean``,
        ``kl_aggregate``, ``mi_cap`` (``log n_eval``), ``n_eval``, ``n_samples``,
        ``n_samples_per_dim`` (ints and floats), and per dimension ``mi_per_dim``,
        ``kl_mean_per_dim``, ``kl_aggregate_per_dim`` (arrays). The per-dimension MI
        is ``I(x; z_d)`` under the marginal aggregate ``q(z_d)``; the dimensions' MI
        need not add up to the joint MI.
    """
    if n_samples_per_dim < 1:
        raise ValueError(f"n_samples_per_dim must be >= 1, got {n_samples_per_dim}")
    est = aggregate_mi(
        loc,
        scale,
        n_eval=n_eval,
        n_samples=n_samples,
        n_samples_per_dim=n_samples_per_dim,
        generator=generator,
    )
    # On the evaluation cells, so that the identity holds on the same set.
    kl_dim = kl_per_dim(est.loc, est.scale)
    kl_mean = float(kl_dim.sum())
    return {
        "mi": est.mi,
        "mi_stderr": est.mi_stderr,
        "kl_mean": kl_mean,
        "kl_aggregate": kl_mean - est.mi,
        "mi_cap": est.mi_cap,
        "n_eval": est.n_eval,
        "n_samples": est.n_samples,
        "n_samples_per_dim": est.n_samples_per_dim,
        "mi_per_dim": est.mi_per_dim,
        "kl_mean_per_dim": kl_dim,
        "kl_aggregate_per_dim": kl_dim - est.mi_per_dim,
    }
