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
        Unless the module learns one inverse dispersion per gene (likelihood nb or
        zinb, theta 0, dispersion gene).
    """
    c = module.config
    if c.likelihood == "poisson" or c.theta > 0 or c.dispersion != "gene":
        raise ValueError(
            "training setting calibrated_dispersion=True needs a learned per-gene dispersion "
            f"(likelihood nb or zinb, theta 0, dispersion gene); got likelihood="
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


def calibrate_dispersion(module: VAE, x: torch.Tensor) -> None:
    """Move log theta towards its per-gene moment estimate given the current decoder.

    The estimate is ``mean(mu^2) / mean((x - mu)^2 - mu)`` over the minibatch, with
    ``mu`` the decoder's means at the posterior means, clipped to :data:`THETA_RANGE`;
    log theta moves :data:`CALIBRATION_RATE` of the way to its log.

    Parameters
    ----------
    module
        The VAE (with a per-gene ``px_log_theta``), updated in place.
    x
        The minibatch's counts.
    """
    with torch.no_grad():
        q = module.inference(x)
        library = q["ql"].loc.exp() if q["ql"] is not None else module.library(x)
        mu = module.generative(q["qz"].loc, library, x)["log_mu"].exp()
        excess = ((x - mu) ** 2 - mu).mean(0)
        moment = (mu**2).mean(0) / excess.clamp(min=1e-12)
        estimate = moment.clamp(*THETA_RANGE).log()
        log_theta = module.px_log_theta
        log_theta.lerp_(estimate, CALIBRATION_RATE)
