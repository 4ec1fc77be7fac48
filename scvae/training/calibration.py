"""Calibrated dispersion: the per-gene inverse dispersion set from the fit, not learned.

At every step log theta moves towards the method-of-moments estimate given the current
decoder (a "calibrated decoder", Rybkin et al. 2021; see ``calibrated_dispersion`` in
:class:`~scvae.training.settings.TrainConfig`).
"""

from __future__ import annotations

import torch

from scvae.module.vae import VAE

CALIBRATION_RATE = 0.1
"""Moving-average weight of the newest moment estimate of log theta."""

THETA_RANGE = (1e-4, 1e4)
"""Range the estimate of theta is clipped to: the moment estimate of a near-Poisson gene
(a negative excess variance) is unbounded."""


def check_calibration(module: VAE) -> None:
    """Reject a module whose dispersion cannot be calibrated.

    Parameters
    ----------
    module
        The VAE to train.

    Raises
    ------
    ValueError
        Unless the module learns one inverse dispersion per gene (or per gene and
        batch): likelihood nb or zinb, theta 0, dispersion gene or gene-batch.
    """
    c = module.config
    if c.likelihood == "poisson" or c.theta > 0 or c.dispersion not in ("gene", "gene-batch"):
        raise ValueError(
            "training setting calibrated_dispersion=True needs a learned per-gene dispersion "
            f"(likelihood nb or zinb, theta 0, dispersion gene or gene-batch); got likelihood="
            f"{c.likelihood!r}, theta={c.theta}, dispersion={c.dispersion!r}"
        )


def freeze_dispersion(module: VAE) -> None:
    """Check the module (:func:`check_calibration`) and take theta off gradient descent.

    Call before the optimizer is built; from then on :func:`calibrate_dispersion` sets it.

    Parameters
    ----------
    module
        The VAE to train.
    """
    check_calibration(module)
    module.px_log_theta.requires_grad_(False)


def _moment_log_theta(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Log of the clipped moment estimate of theta per gene over the rows of ``x``."""
    excess = ((x - mu) ** 2 - mu).mean(0)
    moment = (mu**2).mean(0) / excess.clamp(min=1e-12)
    return moment.clamp(*THETA_RANGE).log()


def calibrate_dispersion(module: VAE, x: torch.Tensor, c: torch.Tensor | None = None) -> None:
    """Move log theta towards its per-gene moment estimate given the current decoder.

    The estimate is ``mean(mu^2) / mean((x - mu)^2 - mu)`` over the minibatch, with
    ``mu`` the decoder's means at the posterior means, clipped to :data:`THETA_RANGE`;
    log theta moves :data:`CALIBRATION_RATE` of the way to its log. With one theta per
    gene and batch (``dispersion="gene-batch"``) each batch category with at least 2
    cells in the minibatch moves its own row towards the estimate over its cells; the
    other rows stay.

    Parameters
    ----------
    module
        The VAE (with a per-gene or per-gene-and-batch ``px_log_theta``), updated in place.
    x
        The minibatch's counts.
    c
        The minibatch's covariate codes (cells x covariates; None without covariates).
    """
    with torch.no_grad():
        q = module.inference(x, c)
        library = q["ql"].loc.exp() if q["ql"] is not None else module.library(x)
        mu = module.generative(q["qz"].loc, library, x, c)["log_mu"].exp()
        log_theta = module.px_log_theta
        if not module.theta_per_batch:
            log_theta.lerp_(_moment_log_theta(x, mu), CALIBRATION_RATE)
            return
        batch = c[:, 0]
        for b in torch.unique(batch).tolist():
            cells = batch == b
            # One cell gives no variance estimate.
            if int(cells.sum()) >= 2:
                log_theta[b].lerp_(_moment_log_theta(x[cells], mu[cells]), CALIBRATION_RATE)
