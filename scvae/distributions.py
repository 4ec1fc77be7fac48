"""Count likelihoods parametrized by their mean, as the decoder produces them."""

from __future__ import annotations

import pyro.distributions as dist
import torch

LIKELIHOODS = ("nb", "zinb", "poisson")


def negative_binomial(log_mu: torch.Tensor, log_theta: torch.Tensor) -> dist.NegativeBinomial:
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    torch parametrizes the NB by ``total_count`` r and the success ``logits``, with mean
    ``r * exp(logits)``; ``r = theta`` and ``logits = log mu - log theta`` give mean ``mu``
    and variance ``mu + mu^2 / theta``.

    Parameters
    ----------
    log_mu
        Log of the mean.
    log_theta
        Log of the inverse dispersion, broadcastable to ``log_mu``.

    Returns
    -------
    dist.NegativeBinomial
        A Pyro distribution with batch shape ``log_mu.shape``.
    """
    theta = log_theta.exp()
    return dist.NegativeBinomial(
        total_count=theta.expand_as(log_mu), logits=log_mu - log_theta, validate_args=False
    )


def count_distribution(
    likelihood: str,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor | None = None,
    zi_logits: torch.Tensor | None = None,
) -> dist.TorchDistribution:
    """Build the count distribution named by ``likelihood``.

    Parameters
    ----------
    likelihood
        One of ``"nb"``, ``"zinb"``, ``"poisson"``.
    log_mu
        Log of the (non-zero-inflated) mean.
    log_theta
        Log inverse dispersion (NB and ZINB).
    zi_logits
        Logits of the zero-inflation probability (ZINB).

    Returns
    -------
    dist.TorchDistribution
        Distribution with batch shape ``log_mu.shape`` and no event dimensions.
    """
    if likelihood == "nb":
        return negative_binomial(log_mu, log_theta)
    if likelihood == "zinb":
        theta = log_theta.exp().expand_as(log_mu)
        return dist.ZeroInflatedNegativeBinomial(
            total_count=theta, logits=log_mu - log_theta, gate_logits=zi_logits, validate_args=False
        )
    if likelihood == "poisson":
        return dist.Poisson(log_mu.exp(), validate_args=False)
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
