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
    t = elbo.terms(vae.model, vae.guide, x, None, 1.0)
    assert t.recon.shape == (32,)
    assert t.kl_per_dim.shape == (32, 4)
    assert torch.isfinite(t.elbo).all()
    loss = elbo.differentiable_loss(vae.model, vae.guide, x, None, 1.0)
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


# ------------------------------------------------------------- conditional models


def _codes(n=32, n_categories=(2, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(k, (n,), generator=gen) for k in n_categories], 1)


def test_model_and_guide_have_identical_signatures():
    import inspect

    assert inspect.signature(VAE.model) == inspect.signature(VAE.guide)
    assert list(inspect.signature(VAE.model).parameters) == ["self", "x", "c", "kl_weight"]


def test_a_kl_weight_in_the_place_of_the_codes_is_an_error():
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=2, n_hidden=8))
    with pytest.raises(TypeError, match="kl_weight by keyword"):
        vae.model(x, 0.5)
    with pytest.raises(TypeError, match="kl_weight by keyword"):
        FreeBitsELBO().terms(vae.model, vae.guide, x, 0.5)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"decoder_layers": 0},
        {"decoder_layers": 3},
        {"z_skip": True, "decoder_layers": 2},
        {"z_skip": True, "decoder_layers": 0},
        {"skip": "gated", "likelihood": "zinb"},
        {"dispersion": "gene-batch", "library": "latent"},
        {"dispersion": "gene-cell", "encode_covariates": True, "n_layers": 2},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
def test_the_decoder_output_depends_on_the_batch(options):
    x = _counts()
    cfg = VAEConfig(n_input=x.shape[1], n_latent=4, n_hidden=16, n_categories=(2, 3), n_batch=2)
    vae = VAE(VAEConfig(**{**cfg.to_dict(), **options})).eval()
    if hasattr(vae, "px_rho_cov"):
        # A linear decoder's offsets start at 0 (the unconditional model): give them values.
        assert not vae.px_rho_cov.weight.any()
        torch.nn.init.normal_(vae.px_rho_cov.weight)
    c = _codes()
    t = FreeBitsELBO().terms(vae.model, vae.guide, x, c, kl_weight=1.0)
    assert t.recon.shape == (32,) and torch.isfinite(t.elbo).all()
    z = torch.randn(32, 4)
    lib = vae.library(x)
    flipped = c.clone()
    flipped[:, 0] = 1 - c[:, 0]
    a = vae.generative(z, lib, x, c)["log_mu"]
    b = vae.generative(z, lib, x, flipped)["log_mu"]
    assert (a - b).abs().amax(-1).min() > 1e-4  # every cell's decoded mean moves
    # The second covariate enters too.
    other = c.clone()
    other[:, 1] = (c[:, 1] + 1) % 3
    assert not torch.allclose(a, vae.generative(z, lib, x, other)["log_mu"])
    # Sample dimensions: the codes broadcast over them.
    zs = torch.randn(5, 32, 4)
    out = vae.generative(zs, lib.expand(5, 32, 1), x, c)
    assert out["log_mu"].shape == (5, 32, x.shape[1])
    torch.testing.assert_close(out["log_mu"][2], vae.generative(zs[2], lib, x, c)["log_mu"])


def test_the_encoder_sees_the_covariates_only_when_asked():
    x = _counts()
    c = _codes()
    flipped = torch.stack([1 - c[:, 0], c[:, 1]], 1)
    for encode_covariates in (False, True):
        torch.manual_seed(0)
        vae = VAE(
            VAEConfig(
                n_input=x.shape[1],
                n_latent=4,
                n_hidden=16,
                n_categories=(2, 3),
                n_batch=2,
                encode_covariates=encode_covariates,
            )
        ).eval()
        same = torch.equal(vae.inference(x, c)["qz"].loc, vae.inference(x, flipped)["qz"].loc)
        assert same is not encode_covariates


def test_gene_batch_dispersion_has_one_theta_per_gene_and_batch():
    x = _counts()
    c = _codes()
    vae = VAE(
        VAEConfig(n_input=x.shape[1], dispersion="gene-batch", n_categories=(2, 3), n_batch=2)
    )
    assert vae.px_log_theta.shape == (2, x.shape[1])
    with torch.no_grad():
        vae.px_log_theta[1] += 1.0
    per_cell = vae.log_theta(c=c)
    assert per_cell.shape == (32, x.shape[1])
    torch.testing.assert_close(per_cell, vae.px_log_theta[c[:, 0]])
    assert torch.equal(vae.log_theta(), vae.px_log_theta)  # the table without codes
    px = vae.generative(torch.randn(32, 10), vae.library(x), x, c)["px"]
    torch.testing.assert_close(px.log_theta, per_cell)
    # Without a batch (covariates only, or none) it is the per-gene dispersion.
    for cats, n_batch in (((3,), 0), ((), 0)):
        cfg = VAEConfig(n_input=x.shape[1], dispersion="gene-batch", n_categories=cats)
        assert VAE(cfg).px_log_theta.shape == (x.shape[1],)
        assert n_batch == cfg.n_batch


def test_a_latent_library_has_a_prior_per_batch():
    x = _counts()
    c = _codes()
    cfg = VAEConfig(n_input=x.shape[1], library="latent", n_categories=(2, 3), n_batch=2)
    vae = VAE(cfg, library_log_mean=[3.0, 5.0], library_log_scale=[0.5, 1.5])
    prior = vae.prior_l(32, c)
    torch.testing.assert_close(prior.loc[:, 0], torch.tensor([3.0, 5.0])[c[:, 0]])
    torch.testing.assert_close(prior.scale[:, 0], torch.tensor([0.5, 1.5])[c[:, 0]])
    assert VAE(cfg).library_log_mean.shape == (2,)  # a value for every batch


def test_a_conditional_model_needs_its_codes():
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_categories=(2, 3), n_batch=2))
    with pytest.raises(ValueError, match="pass their integer codes"):
        vae.generative(torch.randn(32, 10), vae.library(x), x)
    with pytest.raises(ValueError, match=r"shape \(cells, 2\)"):
        vae.generative(torch.randn(32, 10), vae.library(x), x, _codes()[:, :1])
    # An unconditional model ignores codes.
    plain = VAE(VAEConfig(n_input=x.shape[1])).eval()
    z = torch.randn(32, 10)
    assert torch.equal(
        plain.generative(z, plain.library(x), x, _codes())["log_mu"],
        plain.generative(z, plain.library(x), x)["log_mu"],
    )
