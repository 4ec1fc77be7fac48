"""Mutual information against closed forms, its cap, ELBO surgery and its random streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from scvae.diagnostics.kl import kl_per_dim
from scvae.diagnostics.mi import mutual_information


def mi_closed_form(W, sigma=1.0):
    return 0.5 * np.linalg.slogdet(np.eye(W.shape[1]) + W.T @ W / sigma**2)[1]


def test_linear_gaussian_mi_closed_form(linear_gaussian):
    W, _, loc, scale = linear_gaussian()
    # The closed form, checked against h(x) - h(x | z) via Sylvester's determinant.
    expected = mi_closed_form(W)
    via_x = 0.5 * (np.linalg.slogdet(W @ W.T + np.eye(W.shape[0]))[1])
    assert expected == pytest.approx(via_x, rel=1e-12)

    out = mutual_information(loc, scale, n_samples_per_dim=3000, generator=0)
    assert out["n_eval"] == 3000 and out["mi_cap"] == pytest.approx(math.log(3000))
    assert abs(out["mi"] - expected) < 4 * out["mi_stderr"] + 0.02
    # Per dimension: I(x; z_d) = 0.5 log(1 + |w_d|^2 / sigma^2) (independent posteriors).
    per_dim = 0.5 * np.log1p((W**2).sum(0))
    np.testing.assert_allclose(out["mi_per_dim"], per_dim, atol=0.07)
    # The exact posterior averages back to the prior: E[KL] ~ MI, KL(q(z) || p(z)) ~ 0.
    assert out["kl_mean"] == pytest.approx(expected, abs=0.05)
    assert abs(out["kl_aggregate"]) < 0.05


def test_mi_of_encoder_that_outputs_the_prior_is_zero():
    loc, scale = np.zeros((400, 4)), np.ones((400, 4))
    out = mutual_information(loc, scale, generator=3)
    assert out["mi"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(out["mi_per_dim"], 0.0, atol=1e-9)
    assert out["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    # A constant posterior away from the prior has KL (as free bits would force) but no MI.
    out = mutual_information(loc + 0.7, scale * 0.4, generator=3)
    assert out["kl_mean"] > 1.0
    assert out["mi"] == pytest.approx(0.0, abs=1e-9)
    assert out["kl_aggregate"] == pytest.approx(out["kl_mean"], abs=1e-9)


def test_well_separated_posteriors_reach_log_n():
    n = 40
    loc = np.stack([np.arange(n) * 50.0, np.zeros(n)], 1)
    scale = np.full((n, 2), 0.1)
    out = mutual_information(loc, scale, generator=0)
    assert out["mi"] == pytest.approx(math.log(n), abs=1e-6)
    assert out["mi"] <= out["mi_cap"]
    assert out["mi_per_dim"][0] == pytest.approx(math.log(n), abs=1e-6)
    assert out["mi_per_dim"][1] == pytest.approx(0.0, abs=1e-9)


def test_mi_eval_subset_caps_the_estimate():
    n = 500
    loc = np.stack([np.arange(n) * 50.0], 1)
    out = mutual_information(loc, np.full((n, 1), 0.1), n_eval=64, generator=0)
    assert out["n_eval"] == 64
    assert out["mi"] == pytest.approx(math.log(64), abs=1e-6)


def test_elbo_surgery_identity():
    rng = np.random.default_rng(5)
    n, d = 300, 3
    loc = rng.normal(size=(n, d)) * [1.5, 0.5, 0.1]
    scale = rng.uniform(0.2, 1.0, size=(n, d))
    out = mutual_information(loc, scale, n_samples=20 * n, generator=1)
    assert out["kl_mean"] == pytest.approx(out["mi"] + out["kl_aggregate"], abs=1e-10)
    assert out["kl_mean"] == pytest.approx(kl_per_dim(loc, scale).sum(), rel=1e-12)
    # Independent plain Monte Carlo of KL(q(z) || p(z)) = E_q(z)[log q(z) - log p(z)].
    m = 20_000
    src = rng.integers(0, n, m)
    z = loc[src] + scale[src] * rng.normal(size=(m, d))
    comp = (
        -0.5 * (((z[:, None, :] - loc[None]) / scale[None]) ** 2).sum(-1)
        - np.log(scale).sum(-1)[None]
    )
    log_qz = logsumexp(comp, axis=1) - math.log(n) - 0.5 * d * math.log(2 * math.pi)
    log_pz = -0.5 * (z**2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    direct = np.mean(log_qz - log_pz)
    stderr = np.std(log_qz - log_pz) / math.sqrt(m)
    assert out["kl_aggregate"] == pytest.approx(direct, abs=4 * stderr + 4 * out["mi_stderr"])


def test_mi_is_reproducible_and_leaves_global_rng_alone():
    rng = np.random.default_rng(2)
    loc, scale = rng.normal(size=(200, 3)), rng.uniform(0.3, 1.0, size=(200, 3))
    state = torch.get_rng_state()
    a = mutual_information(loc, scale, generator=7)
    b = mutual_information(loc, scale, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.get_rng_state())
    assert a["mi"] == b["mi"]
    assert mutual_information(loc, scale, generator=8)["mi"] != a["mi"]
