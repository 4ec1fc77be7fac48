"""Calibrated dispersion: the moment estimate, what it needs, training with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scvae.model import train
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.calibration import (
    CALIBRATION_RATE,
    THETA_RANGE,
    calibrate_dispersion,
    check_calibration,
    freeze_dispersion,
)


def test_calibrated_dispersion_moves_log_theta_to_the_moment_estimate(small_counts):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(n_input=40, n_latent=3, n_hidden=16, theta_init=1e-3))
    vae.eval()  # deterministic encoder and decoder: the same estimate every call
    x = torch.as_tensor(small_counts.X.toarray())
    with torch.no_grad():
        loc = vae.inference(x)["qz"].loc
        mu = vae.generative(loc, x.sum(-1, keepdim=True), x)["log_mu"].exp().double().numpy()
    xn = x.double().numpy()
    moment = (mu**2).mean(0) / np.maximum(((xn - mu) ** 2 - mu).mean(0), 1e-12)
    expected = np.log(np.clip(moment, *THETA_RANGE))
    start = vae.px_log_theta.detach().double().numpy().copy()
    for _ in range(30):
        calibrate_dispersion(vae, x)
    want = expected + (start - expected) * (1 - CALIBRATION_RATE) ** 30
    assert np.allclose(vae.px_log_theta.detach().double().numpy(), want, atol=1e-4)


@pytest.mark.parametrize(
    "options", [{"likelihood": "poisson"}, {"theta": 2.0}, {"dispersion": "gene-cell"}]
)
def test_only_a_learned_per_gene_dispersion_can_be_calibrated(options):
    with pytest.raises(ValueError, match="calibrated_dispersion=True needs"):
        check_calibration(VAE(VAEConfig(n_input=5, **options)))
    vae = VAE(VAEConfig(n_input=5, likelihood="zinb"))
    freeze_dispersion(vae)
    assert not vae.px_log_theta.requires_grad


def test_calibrated_dispersion_needs_a_learned_gene_dispersion(small_counts):
    with pytest.raises(ValueError, match="calibrated_dispersion=True needs"):
        train(
            small_counts,
            preset=None,
            likelihood="poisson",
            calibrated_dispersion=True,
            max_epochs=1,
        )


def test_calibrated_training_keeps_theta_out_of_the_optimizer(small_counts):
    model = train(
        small_counts,
        preset=None,
        n_latent=3,
        n_hidden=16,
        max_epochs=3,
        batch_size=20,
        theta_init=1e-4,
        calibrated_dispersion=True,
        aggressive_epochs=1,
        aggressive_steps=2,
        progress=False,
    )
    # Started at 1e-4, the dispersion follows the fit within a few steps.
    assert model.history["theta_median"].iloc[-1] > 1e-2


def test_gene_batch_calibration_moves_each_batch_row_to_its_own_estimate(small_counts):
    torch.manual_seed(0)
    cfg = VAEConfig(
        n_input=40, n_latent=3, n_hidden=16, dispersion="gene-batch", n_categories=(3,), n_batch=3
    )
    vae = VAE(cfg).eval()
    freeze_dispersion(vae)
    x = torch.as_tensor(small_counts.X.toarray())
    # Batch 2 has a single cell: no variance estimate, its row stays.
    batch = torch.tensor([0] * 30 + [1] * 29 + [2])
    c = batch[:, None]
    start = vae.px_log_theta.detach().clone()
    calibrate_dispersion(vae, x, c)
    with torch.no_grad():
        loc = vae.inference(x, c)["qz"].loc
        mu = vae.generative(loc, x.sum(-1, keepdim=True), x, c)["log_mu"].exp()
    for b in (0, 1):
        rows = batch == b
        xb, mb = x[rows].double().numpy(), mu[rows].double().numpy()
        moment = (mb**2).mean(0) / np.maximum(((xb - mb) ** 2 - mb).mean(0), 1e-12)
        want = start[b].double().numpy() + CALIBRATION_RATE * (
            np.log(np.clip(moment, *THETA_RANGE)) - start[b].double().numpy()
        )
        np.testing.assert_allclose(vae.px_log_theta[b].double().numpy(), want, atol=1e-4)
    assert torch.equal(vae.px_log_theta[2], start[2])


def test_calibrated_gene_batch_training_runs(two_batches):
    model = train(
        two_batches,
        preset=None,
        batch_key="batch",
        n_latent=3,
        n_hidden=16,
        max_epochs=2,
        batch_size=40,
        dispersion="gene-batch",
        calibrated_dispersion=True,
        progress=False,
    )
    assert model.module.px_log_theta.shape == (2, 40)
    assert not model.module.px_log_theta.requires_grad
