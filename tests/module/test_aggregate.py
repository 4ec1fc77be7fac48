"""The one MI estimator: what training stops on is what the diagnostics report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scvae.diagnostics.mi import mutual_information
from scvae.module.aggregate import aggregate_mi
from scvae.module.config import VAEConfig
from scvae.module.encoding import encode
from scvae.module.vae import VAE
from scvae.training.aggressive import validation_mi


def _posteriors(n: int = 300, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.uniform(0.2, 1.0, size=(n, d))


def test_the_joint_estimate_does_not_depend_on_the_per_dimension_draws():
    loc, scale = _posteriors()
    joint = aggregate_mi(loc, scale, n_eval=200, generator=4)
    both = aggregate_mi(loc, scale, n_eval=200, n_samples_per_dim=50, generator=4)
    assert joint.mi == both.mi and joint.mi_stderr == both.mi_stderr
    assert joint.mi_per_dim is None and joint.n_samples_per_dim == 0
    assert both.mi_per_dim.shape == (3,) and both.n_samples_per_dim == 50
    # The evaluation cells are a subset of the 300 rows, for the KL on the same cells.
    assert joint.loc.shape == (200, 3) and joint.mi_cap == pytest.approx(math.log(200))
    assert torch.equal(joint.loc, both.loc)


def test_the_diagnostics_report_the_same_estimate():
    loc, scale = _posteriors(seed=1)
    est = aggregate_mi(loc, scale, n_samples=250, n_samples_per_dim=100, generator=9)
    out = mutual_information(loc, scale, n_samples=250, n_samples_per_dim=100, generator=9)
    assert out["mi"] == est.mi and np.array_equal(out["mi_per_dim"], est.mi_per_dim)
    assert out["kl_aggregate"] == out["kl_mean"] - est.mi


def test_training_stops_on_the_diagnostics_estimate():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(n_input=30, n_latent=4, n_hidden=16))
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(2.0, size=(120, 30)).astype(np.float32))
    rows = np.arange(20, 110)
    loc, scale = encode(vae, X, 32, rows)
    assert validation_mi(vae, X, rows, 32) == mutual_information(loc, scale)["mi"]


def test_bad_arguments_are_named():
    loc, scale = _posteriors(n=10)
    with pytest.raises(ValueError, match="n_eval"):
        aggregate_mi(loc, scale, n_eval=0)
    with pytest.raises(ValueError, match="n_samples must"):
        aggregate_mi(loc, scale, n_samples=0)
    with pytest.raises(ValueError, match="n_samples_per_dim"):
        aggregate_mi(loc, scale, n_samples_per_dim=-1)
    with pytest.raises(ValueError, match="n_samples_per_dim"):
        mutual_information(loc, scale, n_samples_per_dim=0)
    with pytest.raises(ValueError, match="scale positive"):
        aggregate_mi(loc, -scale)
