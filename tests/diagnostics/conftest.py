"""Fixtures of the diagnostics tests: one thread, tiny double-precision VAEs and counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scvae.module.config import VAEConfig
from scvae.module.vae import VAE


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear_gaussian(n=3000, norms=(2.0, 1.0), n_obs=6, sigma=1.0, seed=0):
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


def _tiny_vae(seed=0, n_genes=12, n_latent=3, **config):
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


def _tiny_counts(n_cells=9, n_genes=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(2, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    X[:, 0] += 1  # no empty cell
    return sp.csr_matrix(X)


@pytest.fixture
def linear_gaussian():
    """``(n, norms, n_obs, sigma, seed) -> (W, x, loc, scale)``: a model with a known posterior."""
    return _linear_gaussian


@pytest.fixture
def tiny_vae():
    """``(seed, n_genes, n_latent, **config) -> VAE``: a float64 VAE in eval mode."""
    return _tiny_vae


@pytest.fixture
def tiny_counts():
    """``(n_cells, n_genes, seed) -> csr_matrix``: negative binomial counts, no empty cell."""
    return _tiny_counts


@pytest.fixture(scope="module")
def cellbench_models(cellbench):
    """CellBench's 500 most expressed genes and two 5-epoch models of it: without and with
    the batch (``(adata, {"unconditional": model, "conditional": model})``)."""
    from scvae.model import train

    adata = cellbench.copy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = dict(n_latent=6, n_hidden=64, batch_size=128, max_epochs=5, progress=False)
    models = {
        "unconditional": train(adata, preset=None, **settings),
        "conditional": train(
            adata, preset=None, batch_key="batch", dispersion="gene-batch", **settings
        ),
    }
    torch.set_num_threads(threads)
    return adata, models
