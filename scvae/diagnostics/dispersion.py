"""Quantiles of the negative binomial's inverse dispersion over genes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scvae.module.vae import VAE

__all__ = ["dispersion_stats"]


def dispersion_stats(module: VAE) -> dict[str, Any]:
    """Quantiles of the NB inverse dispersion ``theta`` over genes (and batches).

    Parameters
    ----------
    module
        The VAE.

    Returns
    -------
    dict
        ``kind`` (``"gene"``, ``"gene-batch"`` or ``"fixed"``), ``n_genes`` and
        ``theta_q05``, ``theta_q25``, ``theta_q50``, ``theta_q75``, ``theta_q95`` (over
        every gene and batch for ``"gene-batch"``, which adds ``n_batches``). Empty for
        a Poisson likelihood and for a per-cell dispersion (it depends on the cell, so
        no single per-gene summary exists).
    """
    log_theta = module.log_theta()
    if log_theta is None:
        return {}
    theta = log_theta.detach().double().exp().cpu().numpy()
    q = np.quantile(theta, [0.05, 0.25, 0.5, 0.75, 0.95])
    if module.config.theta > 0:
        out: dict[str, Any] = {"kind": "fixed", "n_genes": int(theta.size)}
    elif module.theta_per_batch:
        out = {"kind": "gene-batch", "n_genes": int(theta.shape[-1])}
        out["n_batches"] = int(theta.shape[0])
    else:
        out = {"kind": "gene", "n_genes": int(theta.size)}
    out.update({f"theta_q{p:02d}": float(v) for p, v in zip((5, 25, 50, 75, 95), q, strict=True)})
    return out
