"""The objective: analytic KL per dimension, the KL weight, free bits, the one-pass terms."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import scvae
from scvae.data.synthetic import synthetic_counts
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.objective import FreeBitsELBO

FAST = {"n_latent": 3, "n_hidden": 16, "batch_size": 32, "threads": 1}


def _counts(n=32, g=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n, g), 3.0), generator=gen)


def test_analytic_kl_matches_closed_form():
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=3, n_hidden=8)).eval()
    t = FreeBitsELBO().terms(vae.model, vae.guide, x, None, 1.0)
    qz = vae.inference(x)["qz"]
    expected = 0.5 * (qz.loc**2 + qz.scale**2 - 1) - qz.scale.log()
    torch.testing.assert_close(t.kl_per_dim, expected)


def test_kl_weight_is_read_from_the_poutine_scale():
    x = _counts()
    vae = VAE(VAEConfig(n_input=x.shape[1], n_latent=3, n_hidden=8))
    assert FreeBitsELBO().terms(vae.model, vae.guide, x, None, 0.25).kl_weight == pytest.approx(
        0.25
    )
    # A zero weight (start of a warm-up) is allowed and gives a ~0 KL contribution.
    assert FreeBitsELBO().terms(vae.model, vae.guide, x, None, 0.0).kl_weight < 1e-10


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
    t = elbo.terms(vae.model, vae.guide, x, None, 1.0)
    kl_only = elbo.loss_from_terms(t) + t.recon.mean()  # remove the reconstruction term
    grad = torch.autograd.grad(kl_only, vae.qz_head.loc.bias)[0]
    assert grad[0].abs() > 1e-3
    torch.testing.assert_close(grad[1:], torch.zeros(3))
    # Without the floor every dimension gets a KL gradient.
    t = FreeBitsELBO().terms(vae.model, vae.guide, x, None, 1.0)
    grad_plain = torch.autograd.grad(t.kl_per_dim.mean(0).sum(), vae.qz_head.raw_scale.bias)[0]
    assert (grad_plain.abs() > 0).all()


def test_negative_free_bits_rejected():
    with pytest.raises(ValueError, match="free_bits"):
        FreeBitsELBO(free_bits=-0.1)


# ------------------------------------------------------------------ one-pass ELBO


VARIANTS = [
    {},
    {"likelihood": "zinb"},
    {"likelihood": "poisson"},
    {"dispersion": "gene-cell"},
    {"theta": 2.0},
    {"library": "latent"},
    {"skip": "ungated"},
    {"skip": "gated", "bn_gamma": 0.5},
    {"encoder_input": "normalized", "decoder_layers": 0},
]


def _terms(module, x, weight, direct, c=None):
    elbo = FreeBitsELBO(free_bits=0.3)
    elbo.direct = direct
    torch.manual_seed(3)
    module.zero_grad(set_to_none=True)
    t = elbo.terms(module.model, module.guide, x, c, weight)
    elbo.loss_from_terms(t).backward()
    grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    return t, grads


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_one_pass_terms_are_bit_identical_to_pyro_trace(cfg, weight):
    torch.manual_seed(0)
    module = VAE(VAEConfig(n_input=30, n_latent=4, n_hidden=8, **cfg), library_log_mean=4.0)
    x = torch.poisson(torch.full((12, 30), 2.0))
    fast, g_fast = _terms(module, x, weight, direct=True)
    ref, g_ref = _terms(module, x, weight, direct=False)
    assert FreeBitsELBO()._direct_module(module.model, module.guide) is module
    for name in ("recon", "kl_per_dim", "kl_other"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    assert fast.kl_weight == ref.kl_weight
    assert g_fast.keys() == g_ref.keys()
    for k in g_ref:
        assert torch.equal(g_fast[k], g_ref[k]), k


CONDITIONAL = [
    {},
    {"decoder_layers": 0, "dispersion": "gene-batch"},
    {"library": "latent", "dispersion": "gene-batch", "encode_covariates": True},
    {"z_skip": True, "decoder_layers": 2, "likelihood": "zinb"},
    {"skip": "gated", "dispersion": "gene-cell", "n_layers": 2},
]


@pytest.mark.parametrize(
    "cfg", CONDITIONAL, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_one_pass_terms_of_a_conditional_model_are_bit_identical_to_pyro_trace(cfg):
    torch.manual_seed(0)
    module = VAE(
        VAEConfig(n_input=30, n_latent=4, n_hidden=8, n_categories=(3, 2), n_batch=3, **cfg),
        library_log_mean=[3.0, 4.0, 5.0],
        library_log_scale=[0.5, 1.0, 0.7],
    )
    with torch.no_grad():  # offsets of a linear decoder and dispersions differ by batch
        for name, p in module.named_parameters():
            if name.startswith(("px_rho_cov", "px_log_theta")):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.poisson(torch.full((12, 30), 2.0))
    c = torch.stack([torch.arange(12) % 3, torch.arange(12) % 2], 1)
    fast, g_fast = _terms(module, x, 0.7, direct=True, c=c)
    ref, g_ref = _terms(module, x, 0.7, direct=False, c=c)
    for name in ("recon", "kl_per_dim", "kl_other"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    assert g_fast.keys() == g_ref.keys()
    for k in g_ref:
        assert torch.equal(g_fast[k], g_ref[k]), k
    # The codes matter: other batches give other terms.
    other, _ = _terms(module, x, 0.7, direct=True, c=torch.stack([(c[:, 0] + 1) % 3, c[:, 1]], 1))
    assert not torch.equal(other.recon, fast.recon)


def test_handlers_and_other_programs_go_through_pyro():
    module = VAE(VAEConfig(n_input=5, n_latent=2, n_hidden=4))
    elbo = FreeBitsELBO()
    with pyro.poutine.block():
        assert elbo._direct_module(module.model, module.guide) is None
    assert elbo._direct_module(lambda x: None, module.guide) is None
    assert FreeBitsELBO(latent_site="w")._direct_module(module.model, module.guide) is None


@pytest.mark.parametrize("batch_key", [None, "batch"])
def test_training_is_bit_identical_to_the_traced_for_loop_reference(monkeypatch, batch_key):
    adata = synthetic_counts(120, 40, seed=1)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["batch"] = np.array(["a", "b", "c"])[np.arange(120) % 3]
    settings = dict(max_epochs=2, kl_schedule="linear", warmup_fraction=0.5, free_bits=0.2, **FAST)
    settings["batch_key"] = batch_key
    fast = scvae.train(adata, progress=False, **settings)
    assert fast.module.config.n_batch == (3 if batch_key else 0)
    # The reference: Pyro's trace and torch's default (for-loop) Adam on CPU.
    monkeypatch.setattr(FreeBitsELBO, "direct", False)
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: adam(*a, **{**k, "foreach": False}))
    ref = scvae.train(adata, progress=False, **settings)
    cols = ["train_loss", "train_elbo", "val_elbo", "theta_median"]
    assert fast.history[cols].equals(ref.history[cols])
    for k, v in ref.module.state_dict().items():
        assert torch.equal(fast.module.state_dict()[k], v), k
