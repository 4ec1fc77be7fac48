"""The count VAE: likelihood moments, Pyro model/guide, free-bits objective."""

from __future__ import annotations

import pyro
import pytest
import torch

from scvae.module import VAE, VAEConfig
from scvae.module.distributions import count_distribution, negative_binomial
from scvae.training.objective import FreeBitsELBO


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


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


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(n_input=5, likelihood="gauss")
    with pytest.raises(ValueError, match="skip"):
        VAEConfig(n_input=5, skip="maybe")
    with pytest.raises(ValueError, match="theta"):
        VAEConfig(n_input=5, theta=-1.0)


def _counts(n=32, g=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n, g), 3.0), generator=gen)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"likelihood": "zinb"},
        {"likelihood": "poisson"},
        {"dispersion": "gene-cell"},
        {"theta": 0.1},
        {"library": "latent"},
        {"skip": "ungated"},
        {"skip": "gated"},
        {"bn_gamma": 0.5},
        {"decoder_layers": 3, "decoder_hidden": 64},
        {"decoder_layers": 0},
        {"encoder_input": "normalized"},
    ],
)
def test_model_and_guide_share_sites_and_give_finite_elbo(options):
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=4, n_hidden=16, **options))
    elbo = FreeBitsELBO()
    t = elbo.terms(vae.model, vae.guide, x, 1.0)
    assert t.recon.shape == (32,)
    assert t.kl_per_dim.shape == (32, 4)
    assert torch.isfinite(t.elbo).all()
    loss = elbo.differentiable_loss(vae.model, vae.guide, x, 1.0)
    loss.backward()
    assert all(p.grad is not None for p in vae.qz_head.parameters())


def test_analytic_kl_matches_closed_form():
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=3, n_hidden=8)).eval()
    t = FreeBitsELBO().terms(vae.model, vae.guide, x, 1.0)
    qz = vae.inference(x)["qz"]
    expected = 0.5 * (qz.loc**2 + qz.scale**2 - 1) - qz.scale.log()
    torch.testing.assert_close(t.kl_per_dim, expected)


def test_kl_weight_is_read_from_the_poutine_scale():
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=3, n_hidden=8))
    assert FreeBitsELBO().terms(vae.model, vae.guide, x, 0.25).kl_weight == pytest.approx(0.25)
    # A zero weight (start of a warm-up) is allowed and gives a ~0 KL contribution.
    assert FreeBitsELBO().terms(vae.model, vae.guide, x, 0.0).kl_weight < 1e-10


def test_free_bits_mask_the_kl_gradient_of_dimensions_under_the_floor():
    torch.manual_seed(0)
    x = _counts(n=64)
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=4, n_hidden=8, dropout=0.0)).eval()
    # Give dimension 0 a large KL and leave the others near the prior.
    with torch.no_grad():
        vae.qz_head.loc.weight.zero_()
        vae.qz_head.loc.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    q = vae.inference(x)["qz"]
    kl = (0.5 * (q.loc**2 + q.scale**2 - 1) - q.scale.log()).mean(0)
    floor = float((kl[0] + kl[1:].max()).detach() / 2)
    assert kl[0] > floor > kl[1:].max()

    elbo = FreeBitsELBO(free_bits=floor)
    t = elbo.terms(vae.model, vae.guide, x, 1.0)
    kl_only = elbo.loss_from_terms(t) + t.recon.mean()  # remove the reconstruction term
    grad = torch.autograd.grad(kl_only, vae.qz_head.loc.bias)[0]
    assert grad[0].abs() > 1e-3
    torch.testing.assert_close(grad[1:], torch.zeros(3))
    # Without the floor every dimension gets a KL gradient.
    t = FreeBitsELBO().terms(vae.model, vae.guide, x, 1.0)
    grad_plain = torch.autograd.grad(t.kl_per_dim.mean(0).sum(), vae.qz_head.raw_scale.bias)[0]
    assert (grad_plain.abs() > 0).all()


def test_negative_free_bits_rejected():
    with pytest.raises(ValueError, match="free_bits"):
        FreeBitsELBO(free_bits=-0.1)


def test_generative_accepts_sample_dimensions():
    x = _counts(n=8)
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=2, n_hidden=8, skip="gated")).eval()
    z = torch.randn(5, 8, 2)
    out = vae.generative(z, vae.library(x).expand(5, 8, 1), x)
    assert out["log_mu"].shape == (5, 8, x.shape[1])
    assert out["px"].log_prob(x).shape == (5, 8, x.shape[1])
    # The decoder mean sums to the library size.
    torch.testing.assert_close(out["log_mu"].exp().sum(-1), vae.library(x).squeeze(-1).expand(5, 8))


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
