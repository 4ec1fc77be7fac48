"""Count likelihoods: NB moments and parametrization, ZINB and Poisson means."""

from __future__ import annotations

import pytest
import torch

from scvae.module.distributions import count_distribution, negative_binomial


@pytest.mark.parametrize(("mu", "theta"), [(5.0, 2.0), (0.5, 10.0), (40.0, 0.5)])
def test_nb_sample_moments_match_mean_and_inverse_dispersion(mu, theta):
    torch.manual_seed(0)
    d = negative_binomial(torch.tensor(mu).log(), torch.tensor(theta).log())
    s = d.sample((400_000,))
    assert d.mean.item() == pytest.approx(mu, rel=1e-5)
    assert d.variance.item() == pytest.approx(mu + mu**2 / theta, rel=1e-5)
    assert s.mean().item() == pytest.approx(mu, rel=0.02)
    assert s.var().item() == pytest.approx(mu + mu**2 / theta, rel=0.05)


def test_zinb_and_poisson_means():
    log_mu, log_theta = torch.tensor([1.0]), torch.tensor([0.5])
    zi = torch.tensor([0.0])  # gate 0.5
    zinb = count_distribution("zinb", log_mu, log_theta, zi)
    assert zinb.mean.item() == pytest.approx(0.5 * torch.e, rel=1e-5)
    assert count_distribution("poisson", log_mu).mean.item() == pytest.approx(torch.e, rel=1e-5)
    with pytest.raises(ValueError, match="unknown likelihood"):
        count_distribution("gaussian", log_mu)


def test_nb_log_prob_matches_torch_parametrization():
    gen = torch.Generator().manual_seed(1)
    log_mu = torch.randn(16, 30, generator=gen) + 1.0
    log_theta = torch.randn(30, generator=gen)
    x = torch.poisson(log_mu.exp(), generator=gen)
    ours = negative_binomial(log_mu, log_theta).log_prob(x)
    theta = log_theta.exp().expand_as(log_mu)
    ref = torch.distributions.NegativeBinomial(total_count=theta, logits=log_mu - log_theta)
    torch.testing.assert_close(ours, ref.log_prob(x), rtol=1e-5, atol=1e-4)
    # Per-cell dispersion (same shape as the mean) too.
    log_theta_cell = torch.randn(16, 30, generator=gen)
    ref = torch.distributions.NegativeBinomial(
        total_count=log_theta_cell.exp(), logits=log_mu - log_theta_cell
    )
    torch.testing.assert_close(
        negative_binomial(log_mu, log_theta_cell).log_prob(x), ref.log_prob(x), rtol=1e-5, atol=1e-4
    )
