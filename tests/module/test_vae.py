"""The count VAE: Pyro model and guide, the decoder."""

from __future__ import annotations

import pyro
import pytest
import torch

from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.objective import FreeBitsELBO


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


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


def test_generative_accepts_sample_dimensions():
    x = _counts(n=8)
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=2, n_hidden=8, skip="gated")).eval()
    z = torch.randn(5, 8, 2)
    out = vae.generative(z, vae.library(x).expand(5, 8, 1), x)
    assert out["log_mu"].shape == (5, 8, x.shape[1])
    assert out["px"].log_prob(x).shape == (5, 8, x.shape[1])
    # The decoder mean sums to the library size.
    torch.testing.assert_close(out["log_mu"].exp().sum(-1), vae.library(x).squeeze(-1).expand(5, 8))
