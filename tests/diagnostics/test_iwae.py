"""The IWAE bound against exact log marginals, the count likelihood against its distributions,
and the module's IWAE against log weights from Pyro traces of its model and guide."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Normal

from scvae.diagnostics.iwae import count_log_likelihood, iwae_bound, iwae_log_likelihood


def _gaussian_iwae_parts(linear_gaussian, n=200, seed=0):
    W, x, loc, scale = linear_gaussian(n=n, seed=seed)
    Wt, xt = torch.tensor(W), torch.tensor(x)

    def log_lik(w):  # log N(x; W z, I), w: (k, cells, d)
        return Normal(w @ Wt.T, 1.0).log_prob(xt).sum(-1)

    cov = W @ W.T + np.eye(W.shape[0])
    _, logdet = np.linalg.slogdet(cov)
    quad = np.einsum("ij,jk,ik->i", x, np.linalg.inv(cov), x)
    exact = -0.5 * (quad + logdet + W.shape[0] * math.log(2 * math.pi))
    prior = Normal(torch.zeros(W.shape[1], dtype=torch.float64), 1.0)
    return log_lik, torch.tensor(loc), torch.tensor(scale), prior, exact


def test_iwae_with_exact_posterior_is_the_exact_log_marginal(linear_gaussian):
    log_lik, loc, scale, prior, exact = _gaussian_iwae_parts(linear_gaussian)
    for k in (1, 7):
        out = iwae_bound(log_lik, Normal(loc, scale), prior, k, k_chunk=3, generator=0)
        # Every importance weight equals p(x): zero variance.
        np.testing.assert_allclose(out["iwae"].numpy(), exact, atol=1e-9)
        np.testing.assert_allclose(out["elbo_mc"].numpy(), exact, atol=1e-9)


def _mean_bounds(log_lik, q, prior, ks, n_seeds=8):
    """Mean over cells and seeds of the IWAE bound for each K (fixed seeds: not flaky)."""
    means = {}
    for k in ks:
        runs = [iwae_bound(log_lik, q, prior, k, generator=s) for s in range(n_seeds)]
        iwae = torch.stack([r["iwae"] for r in runs])
        elbo = torch.stack([r["elbo_mc"] for r in runs])
        assert bool((iwae >= elbo - 1e-12).all())  # Jensen, draw by draw
        if k == 1:
            torch.testing.assert_close(iwae, elbo)
        means[k] = float(iwae.mean())
    return means


def test_iwae_increases_with_k(linear_gaussian):
    log_lik, loc, scale, prior, exact = _gaussian_iwae_parts(linear_gaussian)
    # A shifted, too narrow proposal: heavy-tailed weights, slow convergence in K. The
    # gaps are 0.6 to 0.9 nats; their Monte Carlo standard errors about 0.03.
    means = _mean_bounds(log_lik, Normal(loc + 1.0, scale * 0.5), prior, (1, 5, 50, 500))
    gaps = [means[b] - means[a] for a, b in ((1, 5), (5, 50), (50, 500))]
    assert all(g > 0.2 for g in gaps), means
    assert means[500] < exact.mean()


def test_iwae_converges_to_log_marginal(linear_gaussian):
    log_lik, loc, scale, prior, exact = _gaussian_iwae_parts(linear_gaussian)
    # A too wide proposal: the bound closes in on log p(x) (standard error 0.001).
    means = _mean_bounds(log_lik, Normal(loc + 0.3, scale * 1.8), prior, (1, 500))
    assert means[1] < exact.mean() - 1.0
    assert means[500] == pytest.approx(exact.mean(), abs=0.01)


def test_iwae_chunking_does_not_change_the_bound(linear_gaussian):
    log_lik, loc, scale, prior, _ = _gaussian_iwae_parts(linear_gaussian, n=20)
    q = Normal(loc, scale * 1.5)
    a = iwae_bound(log_lik, q, prior, 30, generator=4)
    b = iwae_bound(log_lik, q, prior, 30, k_chunk=7, generator=4)
    torch.testing.assert_close(a["iwae"], b["iwae"])


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"theta": 3.0},
        {"likelihood": "poisson"},
        {"likelihood": "zinb"},
        {"dispersion": "gene-cell"},
    ],
    ids=["nb", "nb-fixed", "poisson", "zinb", "gene-cell"],
)
def test_count_log_likelihood_matches_distribution(config, tiny_vae, tiny_counts):
    module = tiny_vae(**config)
    x = torch.tensor(tiny_counts().toarray(), dtype=torch.float64)
    z = torch.randn(
        4, x.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    out = module.generative(z, module.library(x), x)
    expected = out["px"].log_prob(x).sum(-1)
    torch.testing.assert_close(
        count_log_likelihood(module, x)(out), expected, rtol=1e-10, atol=1e-8
    )


def _pyro_log_weights(module, x, eps, c=None):
    """log p(x, w) - log q(w | x) from Pyro traces of the module's model and guide."""
    d = module.n_latent
    inf = module.inference(x, c)
    qz, ql = inf["qz"], inf["ql"]
    out = []
    for e in eps:
        z = qz.loc + qz.scale * e[:, :d]
        data, log_q = {"z": z}, qz.log_prob(z).sum(-1)
        if ql is not None:
            log_l = ql.loc + ql.scale * e[:, d:]
            data["l"] = log_l
            log_q = log_q + ql.log_prob(log_l).sum(-1)
        trace = poutine.trace(poutine.condition(module.model, data=data)).get_trace(x, c)
        trace.compute_log_prob()
        log_p = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
        out.append(log_p - log_q)
    return torch.stack(out)


@pytest.mark.parametrize(
    "config",
    [{}, {"library": "latent"}, {"skip": "gated"}, {"likelihood": "zinb", "library": "latent"}],
    ids=["nb", "latent-library", "gated-skip", "zinb-latent"],
)
def test_iwae_log_likelihood_matches_pyro_model(config, tiny_vae, tiny_counts):
    module = tiny_vae(**config)
    X = tiny_counts()
    k, seed = 16, 11
    pyro.clear_param_store()
    with torch.no_grad():
        got = iwae_log_likelihood(module, X, k=k, batch_size=64, generator=seed)
        x = torch.tensor(X.toarray(), dtype=torch.float64)
        n_w = module.n_latent + (config.get("library") == "latent")
        # The function draws one (k, cells, latent) noise tensor per batch of cells.
        eps = torch.randn(
            (k, x.shape[0], n_w), generator=torch.Generator().manual_seed(seed), dtype=x.dtype
        )
        log_w = _pyro_log_weights(module, x, eps)
    expected = torch.logsumexp(log_w, 0) - math.log(k)
    np.testing.assert_allclose(got["iwae_ll"], expected.numpy(), rtol=1e-9)
    assert got["iwae_ll_per_count"] == pytest.approx(
        expected.sum().item() / X.toarray().astype(np.float64).sum(), rel=1e-9
    )
    assert got["elbo"] <= got["iwae_ll_per_cell"]
    assert got["elbo"] == pytest.approx(got["recon"] - got["kl"])
    assert not module.training


CONDITIONAL = {"n_categories": (3, 2), "n_batch": 3}


def _codes(n_cells):
    return np.stack([np.arange(n_cells) % 3, np.arange(n_cells) // 3 % 2], 1)


@pytest.mark.parametrize(
    "config",
    [{}, {"dispersion": "gene-batch"}, {"dispersion": "gene-batch", "likelihood": "zinb"}],
    ids=["nb", "gene-batch", "zinb-gene-batch"],
)
def test_count_log_likelihood_of_a_conditional_model_matches_distribution(
    config, tiny_vae, tiny_counts
):
    module = tiny_vae(**CONDITIONAL, **config)
    if config:
        with torch.no_grad():  # a different dispersion for every batch
            module.px_log_theta.add_(torch.arange(3.0, dtype=torch.float64)[:, None])
    x = torch.tensor(tiny_counts().toarray(), dtype=torch.float64)
    c = torch.as_tensor(_codes(x.shape[0]))
    z = torch.randn(
        4, x.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    out = module.generative(z, module.library(x), x, c)
    expected = out["px"].log_prob(x).sum(-1)
    torch.testing.assert_close(
        count_log_likelihood(module, x, c)(out), expected, rtol=1e-10, atol=1e-8
    )


@pytest.mark.parametrize(
    "config",
    [{}, {"library": "latent", "dispersion": "gene-batch"}, {"encode_covariates": True}],
    ids=["nb", "latent-library-gene-batch", "encode-covariates"],
)
def test_iwae_of_a_conditional_model_matches_pyro_model(config, tiny_vae, tiny_counts):
    module = tiny_vae(**CONDITIONAL, **config)
    with torch.no_grad():  # a library prior per batch
        module.library_log_mean.copy_(torch.tensor([2.5, 3.0, 3.5]))
        module.library_log_scale.copy_(torch.tensor([0.4, 0.5, 0.8]))
    X = tiny_counts()
    codes = _codes(X.shape[0])
    k, seed = 16, 11
    pyro.clear_param_store()
    with torch.no_grad():
        got = iwae_log_likelihood(module, X, k=k, batch_size=64, generator=seed, covariates=codes)
        x = torch.tensor(X.toarray(), dtype=torch.float64)
        n_w = module.n_latent + (config.get("library") == "latent")
        eps = torch.randn(
            (k, x.shape[0], n_w), generator=torch.Generator().manual_seed(seed), dtype=x.dtype
        )
        log_w = _pyro_log_weights(module, x, eps, torch.as_tensor(codes))
        other = iwae_log_likelihood(
            module, X, k=k, batch_size=64, generator=seed, covariates=(codes + 1) % [3, 2]
        )
    expected = torch.logsumexp(log_w, 0) - math.log(k)
    np.testing.assert_allclose(got["iwae_ll"], expected.numpy(), rtol=1e-9)
    assert got["elbo"] == pytest.approx(got["recon"] - got["kl"])
    assert not np.allclose(other["iwae_ll"], got["iwae_ll"])
