"""The skip designs the collapse atlas added to the VAE: skip dropout, the z-skip decoder."""

from __future__ import annotations

import pytest
import torch

from scvae.module.config import VAEConfig
from scvae.module.vae import VAE


def _vae(**kw) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(n_input=30, n_latent=3, n_hidden=16, **kw))


def test_skip_dropout_switches_whole_cells_off_in_training_only():
    vae = _vae(skip="ungated", skip_dropout=0.5)
    x = torch.poisson(torch.full((400, 30), 3.0))
    z = torch.randn(400, 3)
    lib = x.sum(-1, keepdim=True)
    vae.eval()
    first = vae.generative(z, lib, x)["log_mu"]
    assert torch.equal(first, vae.generative(z, lib, x)["log_mu"])  # eval: nothing dropped
    vae.train()
    torch.manual_seed(1)
    log_rho = vae.generative(z, lib, x)["log_mu"] - torch.log(lib)
    # What a cell without its skip path gets: the decoder of z alone (same batch statistics).
    torch.manual_seed(1)
    without = torch.log_softmax(vae.px_rho(vae.decoder(z)), dim=-1)
    dropped = torch.isclose(log_rho, without, atol=1e-5).all(-1)
    assert 0.35 < dropped.float().mean().item() < 0.65
    # The kept cells' paths are scaled up by 1 / (1 - p), as in inverted dropout.
    kept = ~dropped
    h = vae.decoder(z) + 2.0 * vae.skip_net(torch.log1p(x))
    expected = torch.log_softmax(vae.px_rho(h), dim=-1)
    assert torch.allclose(log_rho[kept], expected[kept], atol=1e-5)


def test_z_skip_decoder_feeds_z_to_every_layer():
    vae = _vae(z_skip=True, decoder_layers=3)
    assert len(vae.decoder.z_inputs) == 2 and hasattr(vae, "px_rho_z")
    vae.eval()
    z = torch.randn(5, 3, requires_grad=True)
    out = vae.generative(z, torch.full((5, 1), 100.0))["log_mu"]
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # Sample dimensions are accepted, as for the plain decoder.
    out2 = vae.generative(torch.randn(2, 5, 3), torch.full((5, 1), 100.0))["log_mu"]
    assert out2.shape == (2, 5, 30)


def test_skip_dropout_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="skip_dropout"):
        VAEConfig(n_input=3, skip_dropout=1.0)


def test_inference_and_generative_parameters_partition_the_module():
    vae = _vae(bn_gamma=0.5, library="latent", skip="gated")
    inf = {id(p) for p in vae.inference_parameters()}
    gen = {id(p) for p in vae.generative_parameters()}
    assert inf and gen and not inf & gen
    assert inf | gen == {id(p) for p in vae.parameters()}
    assert id(vae.qz_bn_shift) in inf and id(vae.skip_net[0].weight) in gen
