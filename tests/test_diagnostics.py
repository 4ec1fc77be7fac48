"""Collapse diagnostics: estimators against closed forms, the module path, the AnnData edge."""

from __future__ import annotations

import json
import math
import warnings

import anndata
import h5py
import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine
from scipy.special import logsumexp
from torch.distributions import Normal

from scvae.diagnostics import core as dg
from scvae.model import SCVAE
from scvae.module import VAE, VAEConfig
from scvae.training.settings import TrainConfig


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- helpers


def linear_gaussian(n=3000, norms=(2.0, 1.0), n_obs=6, sigma=1.0, seed=0):
    """x = W z + noise with orthogonal columns of W: the exact posterior is diagonal."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n_obs, len(norms))))
    W = q * np.asarray(norms)
    z = rng.normal(size=(n, len(norms)))
    x = z @ W.T + sigma * rng.normal(size=(n, n_obs))
    S = np.linalg.inv(np.eye(len(norms)) + W.T @ W / sigma**2)
    assert np.allclose(S, np.diag(np.diag(S)))
    loc = x @ (S @ W.T / sigma**2).T
    scale = np.broadcast_to(np.sqrt(np.diag(S)), loc.shape).copy()
    return W, x, loc, scale


def mi_closed_form(W, sigma=1.0):
    return 0.5 * np.linalg.slogdet(np.eye(W.shape[1]) + W.T @ W / sigma**2)[1]


def tiny_vae(seed=0, n_genes=12, n_latent=3, **config):
    torch.manual_seed(seed)
    config.setdefault("dropout", 0.0)
    module = VAE(
        VAEConfig(n_input=n_genes, n_latent=n_latent, n_hidden=16, **config),
        library_log_mean=3.0,
        library_log_scale=0.5,
    ).double()
    # Non-trivial BatchNorm running statistics, so eval mode matters.
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return module.eval()


def tiny_counts(n_cells=9, n_genes=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    X[:, 0] += 1  # no empty cell
    return sp.csr_matrix(X)


# ----------------------------------------------------------------- KL, active units


def test_kl_per_dim_matches_torch():
    rng = np.random.default_rng(1)
    loc, scale = rng.normal(size=(50, 4)), rng.uniform(0.1, 2.0, size=(50, 4))
    expected = torch.distributions.kl_divergence(
        Normal(torch.tensor(loc), torch.tensor(scale)), Normal(0.0, 1.0)
    ).mean(0)
    np.testing.assert_allclose(dg.kl_per_dim(loc, scale), expected.numpy(), rtol=1e-12)
    assert dg.kl_per_dim(np.zeros((5, 3)), np.ones((5, 3))) == pytest.approx(np.zeros(3))
    with pytest.raises(ValueError):
        dg.kl_per_dim(loc, -scale)


def test_active_units_threshold():
    loc = np.stack([np.linspace(-1, 1, 101), np.full(101, 3.0), 0.05 * np.linspace(-1, 1, 101)], 1)
    count, mask = dg.active_units(loc, threshold=0.01)
    assert count == 1 and mask.tolist() == [True, False, False]
    assert dg.active_units(loc, threshold=1e-4)[0] == 2


# -------------------------------------------------------------- mutual information


def test_linear_gaussian_mi_closed_form():
    W, _, loc, scale = linear_gaussian()
    # The closed form, checked against h(x) - h(x | z) via Sylvester's determinant.
    expected = mi_closed_form(W)
    via_x = 0.5 * (np.linalg.slogdet(W @ W.T + np.eye(W.shape[0]))[1])
    assert expected == pytest.approx(via_x, rel=1e-12)

    out = dg.mutual_information(loc, scale, n_samples_per_dim=3000, generator=0)
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
    out = dg.mutual_information(loc, scale, generator=3)
    assert out["mi"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(out["mi_per_dim"], 0.0, atol=1e-9)
    assert out["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    # A constant posterior away from the prior has KL (as free bits would force) but no MI.
    out = dg.mutual_information(loc + 0.7, scale * 0.4, generator=3)
    assert out["kl_mean"] > 1.0
    assert out["mi"] == pytest.approx(0.0, abs=1e-9)
    assert out["kl_aggregate"] == pytest.approx(out["kl_mean"], abs=1e-9)


def test_well_separated_posteriors_reach_log_n():
    n = 40
    loc = np.stack([np.arange(n) * 50.0, np.zeros(n)], 1)
    scale = np.full((n, 2), 0.1)
    out = dg.mutual_information(loc, scale, generator=0)
    assert out["mi"] == pytest.approx(math.log(n), abs=1e-6)
    assert out["mi"] <= out["mi_cap"]
    assert out["mi_per_dim"][0] == pytest.approx(math.log(n), abs=1e-6)
    assert out["mi_per_dim"][1] == pytest.approx(0.0, abs=1e-9)


def test_mi_eval_subset_caps_the_estimate():
    n = 500
    loc = np.stack([np.arange(n) * 50.0], 1)
    out = dg.mutual_information(loc, np.full((n, 1), 0.1), n_eval=64, generator=0)
    assert out["n_eval"] == 64
    assert out["mi"] == pytest.approx(math.log(64), abs=1e-6)


def test_elbo_surgery_identity():
    rng = np.random.default_rng(5)
    n, d = 300, 3
    loc = rng.normal(size=(n, d)) * [1.5, 0.5, 0.1]
    scale = rng.uniform(0.2, 1.0, size=(n, d))
    out = dg.mutual_information(loc, scale, n_samples=20 * n, generator=1)
    assert out["kl_mean"] == pytest.approx(out["mi"] + out["kl_aggregate"], abs=1e-10)
    assert out["kl_mean"] == pytest.approx(dg.kl_per_dim(loc, scale).sum(), rel=1e-12)
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
    a = dg.mutual_information(loc, scale, generator=7)
    b = dg.mutual_information(loc, scale, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.get_rng_state())
    assert a["mi"] == b["mi"]
    assert dg.mutual_information(loc, scale, generator=8)["mi"] != a["mi"]


# --------------------------------------------------------------------------- IWAE


def _gaussian_iwae_parts(n=200, seed=0):
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


def test_iwae_with_exact_posterior_is_the_exact_log_marginal():
    log_lik, loc, scale, prior, exact = _gaussian_iwae_parts()
    for k in (1, 7):
        out = dg.iwae_bound(log_lik, Normal(loc, scale), prior, k, k_chunk=3, generator=0)
        # Every importance weight equals p(x): zero variance.
        np.testing.assert_allclose(out["iwae"].numpy(), exact, atol=1e-9)
        np.testing.assert_allclose(out["elbo_mc"].numpy(), exact, atol=1e-9)


def _mean_bounds(log_lik, q, prior, ks, n_seeds=8):
    """Mean over cells and seeds of the IWAE bound for each K (fixed seeds: not flaky)."""
    means = {}
    for k in ks:
        runs = [dg.iwae_bound(log_lik, q, prior, k, generator=s) for s in range(n_seeds)]
        iwae = torch.stack([r["iwae"] for r in runs])
        elbo = torch.stack([r["elbo_mc"] for r in runs])
        assert bool((iwae >= elbo - 1e-12).all())  # Jensen, draw by draw
        if k == 1:
            torch.testing.assert_close(iwae, elbo)
        means[k] = float(iwae.mean())
    return means


def test_iwae_increases_with_k():
    log_lik, loc, scale, prior, exact = _gaussian_iwae_parts()
    # A shifted, too narrow proposal: heavy-tailed weights, slow convergence in K. The
    # gaps are 0.6 to 0.9 nats; their Monte Carlo standard errors about 0.03.
    means = _mean_bounds(log_lik, Normal(loc + 1.0, scale * 0.5), prior, (1, 5, 50, 500))
    gaps = [means[b] - means[a] for a, b in ((1, 5), (5, 50), (50, 500))]
    assert all(g > 0.2 for g in gaps), means
    assert means[500] < exact.mean()


def test_iwae_converges_to_log_marginal():
    log_lik, loc, scale, prior, exact = _gaussian_iwae_parts()
    # A too wide proposal: the bound closes in on log p(x) (standard error 0.001).
    means = _mean_bounds(log_lik, Normal(loc + 0.3, scale * 1.8), prior, (1, 500))
    assert means[1] < exact.mean() - 1.0
    assert means[500] == pytest.approx(exact.mean(), abs=0.01)


def test_iwae_chunking_does_not_change_the_bound():
    log_lik, loc, scale, prior, _ = _gaussian_iwae_parts(n=20)
    q = Normal(loc, scale * 1.5)
    a = dg.iwae_bound(log_lik, q, prior, 30, generator=4)
    b = dg.iwae_bound(log_lik, q, prior, 30, k_chunk=7, generator=4)
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
def test_count_log_lik_matches_distribution(config):
    module = tiny_vae(**config)
    x = torch.tensor(tiny_counts().toarray(), dtype=torch.float64)
    z = torch.randn(
        4, x.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    out = module.generative(z, module.library(x), x)
    expected = out["px"].log_prob(x).sum(-1)
    torch.testing.assert_close(dg._count_log_lik(module, x)(out), expected, rtol=1e-10, atol=1e-8)


def _pyro_log_weights(module, x, eps):
    """log p(x, w) - log q(w | x) from Pyro traces of the module's model and guide."""
    d = module.n_latent
    inf = module.inference(x)
    qz, ql = inf["qz"], inf["ql"]
    out = []
    for e in eps:
        z = qz.loc + qz.scale * e[:, :d]
        data, log_q = {"z": z}, qz.log_prob(z).sum(-1)
        if ql is not None:
            log_l = ql.loc + ql.scale * e[:, d:]
            data["l"] = log_l
            log_q = log_q + ql.log_prob(log_l).sum(-1)
        trace = poutine.trace(poutine.condition(module.model, data=data)).get_trace(x)
        trace.compute_log_prob()
        log_p = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
        out.append(log_p - log_q)
    return torch.stack(out)


@pytest.mark.parametrize(
    "config",
    [{}, {"library": "latent"}, {"skip": "gated"}, {"likelihood": "zinb", "library": "latent"}],
    ids=["nb", "latent-library", "gated-skip", "zinb-latent"],
)
def test_iwae_log_likelihood_matches_pyro_model(config):
    module = tiny_vae(**config)
    X = tiny_counts()
    k, seed = 16, 11
    pyro.clear_param_store()
    with torch.no_grad():
        got = dg.iwae_log_likelihood(module, X, k=k, batch_size=64, generator=seed)
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


# ----------------------------------------------------------------- decoder Jacobian


def _fd_gram(module, loc, library, x, h=1e-6):
    """mean_i J_i^T J_i of d log_mu / dz by central differences."""
    grams = []
    for i in range(loc.shape[0]):
        cols = []
        for a in range(loc.shape[1]):
            step = torch.zeros_like(loc[i : i + 1])
            step[0, a] = h

            def f(z, i=i):
                xi = None if x is None else x[i : i + 1]
                return module.generative(z, library[i : i + 1], xi)["log_mu"][0]

            cols.append((f(loc[i : i + 1] + step) - f(loc[i : i + 1] - step)) / (2 * h))
        J = torch.stack(cols, 1)
        grams.append(J.T @ J)
    return torch.stack(grams).mean(0)


@pytest.mark.parametrize("skip", ["none", "gated"])
def test_decoder_jacobian_matches_finite_differences(skip):
    module = tiny_vae(skip=skip, decoder_layers=2)
    module.train()  # the function must switch to eval mode itself, and back
    X = tiny_counts(n_cells=6)
    x = torch.tensor(X.toarray(), dtype=torch.float64)
    loc = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    library = x.sum(1, keepdim=True)
    out = dg.decoder_jacobian(module, loc, library, X if skip != "none" else None, n_cells=100)
    assert module.training
    module.eval()
    with torch.no_grad():
        expected = _fd_gram(module, loc, library, x if skip != "none" else None)
    np.testing.assert_allclose(out["jtj"], expected.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["sensitivity_per_dim"], np.diag(expected.numpy()), rtol=1e-6)
    eig = np.linalg.eigvalsh(expected.numpy())[::-1]
    np.testing.assert_allclose(out["jtj_eigenvalues"], eig, rtol=1e-6, atol=1e-12)
    assert out["n_cells"] == 6


def test_decoder_ignoring_a_dimension_has_zero_sensitivity():
    module = tiny_vae(n_latent=4)
    with torch.no_grad():
        module.decoder[0].weight[:, 2] = 0.0
    loc = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    out = dg.decoder_jacobian(
        module, loc, torch.full((30,), 100.0), n_cells=10, kl=[0.5, 0.4, 0.3, 0.2]
    )
    assert out["n_cells"] == 10
    sens = out["sensitivity_per_dim"]
    assert sens[2] == 0.0 and (np.delete(sens, 2) > 1e-4).all()
    assert out["jtj_eigenvalues"][-1] == pytest.approx(0.0, abs=1e-12)
    assert -1 <= out["kl_sensitivity_spearman"] <= 1


def test_spearman_is_nan_safe():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(dg.kl_sensitivity_spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
        assert math.isnan(dg.kl_sensitivity_spearman([1.0], [2.0]))
        assert math.isnan(dg.kl_sensitivity_spearman([1.0, np.nan], [2.0, 3.0]))
    assert dg.kl_sensitivity_spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)


# ---------------------------------------------------------- dispersion and verdict


def test_dispersion_stats():
    stats = dg.dispersion_stats(tiny_vae())
    assert stats["kind"] == "gene" and stats["n_genes"] == 12
    assert stats["theta_q05"] <= stats["theta_q50"] <= stats["theta_q95"]
    fixed = dg.dispersion_stats(tiny_vae(theta=2.5))
    assert fixed["kind"] == "fixed" and fixed["theta_q50"] == pytest.approx(2.5)
    assert dg.dispersion_stats(tiny_vae(likelihood="poisson")) == {}


def _verdict(**overrides):
    args = {
        "mi": 2.0,
        "kl_per_dim": [1.0, 0.8, 0.6],
        "active_mask": [True, True, True],
        "sensitivity_per_dim": [5.0, 3.0, 1.0],
        "mi_per_dim": [0.9, 0.7, 0.5],
        "mi_cap": math.log(5000),
    }
    args.update(overrides)
    return dg.verdict(**args)


def test_verdict_cases():
    assert _verdict()[0] == "healthy"
    label, reason = _verdict(active_mask=[True, True, False], mi_per_dim=[0.9, 0.7, 0.0])
    assert label == "partial collapse" and "inactive dimensions [2]" in reason
    # KL and information in dimension 1, but the decoder does not listen to it.
    label, reason = _verdict(sensitivity_per_dim=[5.0, 1e-6, 1.0])
    assert label == "partial collapse" and "decoder ignores" in reason and "[1]" in reason
    # Free bits: KL in every dimension, means vary a bit, but dim 2 holds no information.
    label, reason = _verdict(mi_per_dim=[0.9, 0.7, 0.001])
    assert label == "partial collapse" and "noise" in reason
    label, reason = _verdict(mi=0.02)
    assert label == "collapsed" and "I(x;z)" in reason
    label, reason = _verdict(sensitivity_per_dim=[1e-5, 1e-6, 0.0])
    assert label == "collapsed" and "decoder ignores z" in reason
    assert _verdict(active_mask=[False] * 3)[0] == "collapsed"
    assert _verdict(kl_per_dim=[0.01, 0.01, 0.01])[0] == "collapsed"
    assert _verdict(mi=float("nan"))[0] == "collapsed"
    strict = dg.VerdictThresholds(min_mi=5.0)
    assert _verdict(thresholds=strict)[0] == "collapsed"
    assert "near its cap" in _verdict(mi=8.0)[1]


def test_prior_encoder_module_is_collapsed():
    module = tiny_vae()
    with torch.no_grad():  # the encoder ignores x and outputs N(0, 1)
        module.qz_head.loc.weight.zero_()
        module.qz_head.loc.bias.zero_()
        module.qz_head.raw_scale.weight.zero_()
        module.qz_head.raw_scale.bias.fill_(math.log(math.expm1(1.0 - module.qz_head.min_scale)))
    X = tiny_counts(n_cells=40)
    model = SCVAE(module, TrainConfig(), [f"g{i}" for i in range(12)], split=["train"] * 40)
    adata = anndata.AnnData(X)
    adata.var_names = [f"g{i}" for i in range(12)]
    d = dg.diagnose(model, adata, k_iwae=5, n_jacobian=10)
    assert d["mi"] == pytest.approx(0.0, abs=1e-6)
    assert d["kl_total"] == pytest.approx(0.0, abs=1e-6)
    assert d["active_units"] == 0
    assert d["verdict"] == "collapsed"
    assert d["validation"] == {} and d["iwae_cells"] == "all" and d["settings"]["layer"] == "X"


# ------------------------------------------------------------- real data, end to end


@pytest.fixture(scope="module")
def trained(shared_data):
    from scvae.training.loop import train

    with h5py.File(shared_data / "pbmc4k_top2000.h5") as f:
        X = np.asarray(f["X"][:800], dtype=np.float32)
    adata = anndata.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"gene{i}" for i in range(X.shape[1])]
    adata.layers["counts"] = adata.X.copy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = train(
        adata,
        n_latent=6,
        max_epochs=3,
        kl_schedule="linear",
        warmup_fraction=0.5,
        seed=0,
        device="cpu",
        progress=False,
    )
    torch.set_num_threads(threads)
    return model, adata


TOP_KEYS = {
    "verdict",
    "verdict_reason",
    "mi",
    "active_units",
    "active_mask",
    "kl_per_dim",
    "kl_total",
    "kl_mean",
    "kl_aggregate",
    "mi_per_dim",
    "mi_cap",
    "iwae_ll_per_cell",
    "iwae_ll_per_count",
    "elbo",
    "recon",
    "jtj_eigenvalues",
    "sensitivity_per_dim",
    "kl_sensitivity_spearman",
    "dispersion",
    "n_cells",
    "settings",
    "validation",
}


def _same(a, b):
    """Equal, with NaN equal to NaN and arrays equal to lists."""
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        b = list(np.asarray(b).tolist()) if not isinstance(b, list) else b
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(float(b))) or a == float(b)
    return a == b


def test_diagnose_real_data(trained, tmp_path):
    model, adata = trained
    d = dg.diagnose(model, adata, k_iwae=20, n_jacobian=100, seed=0)
    assert TOP_KEYS <= set(d)
    assert d["verdict"] in dg.VERDICTS and d["verdict_reason"]
    assert d["n_cells"] == 800 and d["n_latent"] == 6 and len(d["kl_per_dim"]) == 6
    assert d["n_validation_cells"] == 80 and d["iwae_cells"] == "validation"
    val = d["validation"]
    assert set(val) == set(d) - {
        "settings",
        "validation",
        "n_genes",
        "n_latent",
        "n_validation_cells",
    }
    assert val["n_cells"] == 80 and val["mi_cap"] == pytest.approx(math.log(80))
    assert 0 <= d["mi"] <= d["mi_cap"]
    assert d["kl_mean"] == pytest.approx(d["mi"] + d["kl_aggregate"])
    assert d["elbo"] <= d["iwae_ll_per_cell"] < 0
    assert d["dispersion"]["kind"] == "gene"
    assert d["settings"]["model"]["n_latent"] == 6

    # JSON: strict, atomic, NaN <-> null.
    d["kl_sensitivity_spearman"] = float("nan")
    path = tmp_path / "diagnostics.json"
    dg.write_diagnostics(d, path)
    raw = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert raw["kl_sensitivity_spearman"] is None
    assert _same(d, dg.read_diagnostics(path))

    # h5ad: the dictionary goes into uns as it is.
    adata2 = adata.copy()
    adata2.uns["scvae"] = {"diagnostics": d}
    adata2.write_h5ad(tmp_path / "a.h5ad")
    back = anndata.read_h5ad(tmp_path / "a.h5ad").uns["scvae"]["diagnostics"]
    assert _same(d, _plain(back))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def test_diagnose_is_reproducible(trained):
    model, adata = trained
    state = torch.get_rng_state()
    a = dg.diagnose(model, adata, k_iwae=5, n_jacobian=50, seed=3)
    b = dg.diagnose(model, adata, k_iwae=5, n_jacobian=50, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert _same(a, b)
    c = dg.diagnose(model, adata, k_iwae=5, n_jacobian=50, seed=4)
    assert c["mi"] != a["mi"]


def test_run_diagnose_writes_json_and_figures(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "model.pt")
    adata.write_h5ad(tmp_path / "latent.h5ad")
    d = dg.run_diagnose(
        tmp_path / "model.pt",
        tmp_path / "latent.h5ad",
        tmp_path / "out" / "diagnostics.json",
        figure_dir=tmp_path / "figures",
        k_iwae=5,
        n_jacobian=50,
    )
    assert dg.read_diagnostics(tmp_path / "out" / "diagnostics.json")["verdict"] == d["verdict"]
    for name in dg.FIGURE_NAMES:
        png = tmp_path / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("*.tmp*")]


def test_diagnose_rejects_unknown_thresholds(trained):
    model, adata = trained
    with pytest.raises(ValueError, match="unknown verdict threshold"):
        dg.diagnose(model, adata, thresholds={"min_information": 1.0})


def test_figures_take_json_nulls(tmp_path):
    from scvae.plotting.diagnostics import plot_diagnostics

    diag = {
        "verdict": "partial collapse",
        "n_cells": 100,
        "mi": 0.8,
        "mi_cap": math.log(100),
        "kl_per_dim": [1.2, 0.0, 0.4],
        "mi_per_dim": [0.7, None, 0.1],
        "active_mask": [True, False, True],
        "sensitivity_per_dim": [30.0, 0.0, 1e-5],
        "jtj_eigenvalues": [30.0, 1e-5, 0.0],
        "kl_sensitivity_spearman": None,
    }
    paths = {name: tmp_path / f"{name}.png" for name in dg.FIGURE_NAMES}
    plot_diagnostics(diag, paths)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths.values())
    with pytest.raises(ValueError, match="unknown figure"):
        plot_diagnostics(diag, {"umap": tmp_path / "u.png"})
