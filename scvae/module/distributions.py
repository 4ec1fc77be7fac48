"""Count likelihoods parametrized by their mean, as the decoder produces them."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from scvae.module.config import LIKELIHOODS


class NegativeBinomial(dist.NegativeBinomial):
    """Negative binomial parametrized by log mean and log inverse dispersion.

    Same distribution as :class:`pyro.distributions.NegativeBinomial` (and its sampling,
    mean and variance), with a log-density written in ``(log mu, log theta)``:

    ``theta (log theta - log(theta + mu)) + x (log mu - log(theta + mu))
    + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``.

    ``lgamma(theta)`` is evaluated on the un-broadcast theta (one value per gene rather
    than per cell and gene), which saves one of the three full-size log-gamma evaluations
    and its digamma gradient on every training step.
    """

    def __init__(self, log_mu: torch.Tensor, log_theta: torch.Tensor) -> None:
        self.log_mu, self.log_theta = log_mu, log_theta
        theta = log_theta.exp()
        self._theta = theta
        super().__init__(
            total_count=theta.expand_as(log_mu), logits=log_mu - log_theta, validate_args=False
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-density of counts ``value``."""
        log_mu, log_theta, theta = self.log_mu, self.log_theta, self._theta
        log_theta_mu = torch.logaddexp(log_theta, log_mu)
        dense = theta * (log_theta - log_theta_mu) + value * (log_mu - log_theta_mu)
        # The log-gamma terms vanish where the count is 0, which is most entries of a
        # single-cell matrix: evaluate them (and their digamma gradients) on the non-zero
        # counts only.
        shape = torch.broadcast_shapes(value.shape, log_mu.shape)
        value = value.expand(shape)
        nz = value.nonzero(as_tuple=True)
        counts = value[nz]
        theta_nz = theta.expand(shape)[nz]
        gamma_terms = (
            torch.lgamma(counts + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(counts + 1)
        )
        return dense.index_put(nz, gamma_terms, accumulate=True)

    def expand(self, batch_shape, _instance=None):
        """Expand to ``batch_shape`` (keeps the mean/dispersion parametrization)."""
        batch_shape = torch.Size(batch_shape)
        return NegativeBinomial(self.log_mu.expand(batch_shape), self.log_theta)


def negative_binomial(log_mu: torch.Tensor, log_theta: torch.Tensor) -> NegativeBinomial:
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
    NegativeBinomial
        A Pyro distribution with batch shape ``log_mu.shape``.
    """
    return NegativeBinomial(log_mu, log_theta)


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
