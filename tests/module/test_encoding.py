"""Encoding cells: the posterior of every row in eval mode, the same as the module's own pass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scvae.module.config import VAEConfig
from scvae.module.encoding import encode, eval_mode, module_device
from scvae.module.vae import VAE


def _module(**config) -> VAE:
    torch.manual_seed(0)
    module = VAE(VAEConfig(n_input=12, n_latent=3, n_hidden=16, **config))
    # Non-trivial BatchNorm running statistics, so eval mode matters.
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return module


def _counts(n_cells: int = 23) -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.csr_matrix(rng.poisson(2.0, size=(n_cells, 12)).astype(np.float32))


@pytest.mark.parametrize("config", [{}, {"library": "latent"}], ids=["observed", "latent"])
def test_encode_is_the_eval_mode_posterior_of_every_row(config):
    module = _module(**config).train()
    X = _counts()
    loc, scale = encode(module, X, batch_size=5)
    assert module.training  # restored
    assert loc.dtype == scale.dtype == np.float64 and loc.shape == scale.shape == (23, 3)
    module.eval()
    with torch.no_grad():
        qz = module.inference(torch.tensor(X.toarray()))["qz"]
    np.testing.assert_allclose(loc, qz.loc.double().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scale, qz.scale.double().numpy(), rtol=1e-6, atol=1e-7)


def test_encode_takes_rows_and_batches_do_not_matter():
    module = _module()
    X = _counts()
    loc, scale = encode(module, X, batch_size=4)
    rows = np.array([2, 7, 8, 19])
    loc_r, scale_r = encode(module, X, batch_size=3, rows=rows)
    np.testing.assert_allclose(loc_r, loc[rows], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scale_r, scale[rows], rtol=1e-6, atol=1e-7)


def test_encode_runs_in_the_module_dtype():
    module = _module().double()
    loc, _ = encode(module, _counts(), batch_size=8)
    assert loc.dtype == np.float64 and np.isfinite(loc).all()


def test_eval_mode_restores_the_flag_after_an_error():
    module = _module().train()
    with pytest.raises(RuntimeError), eval_mode(module) as m:
        assert m is module and not module.training
        raise RuntimeError
    assert module.training
    with eval_mode(module.eval()):
        pass
    assert not module.training


def test_module_device():
    assert module_device(_module()) == torch.device("cpu")


def test_get_latent_is_encode_in_float32():
    import anndata

    from scvae.model import SCVAE
    from scvae.training.settings import TrainConfig

    module = _module()
    X = _counts()
    adata = anndata.AnnData(X)
    adata.var_names = [f"g{i}" for i in range(12)]
    model = SCVAE.from_module(module, TrainConfig(), list(adata.var_names))
    loc, scale = model.get_latent(adata, batch_size=6, return_scale=True)
    expected = encode(module, X, batch_size=6)
    assert loc.dtype == scale.dtype == np.float32
    np.testing.assert_array_equal(loc, expected[0].astype(np.float32))
    np.testing.assert_array_equal(scale, expected[1].astype(np.float32))
    # Without the cast, float32 -> float64 is exact: the float64 values are the module's.
    np.testing.assert_array_equal(loc.astype(np.float64), expected[0])


def test_encode_passes_each_cells_covariates():
    module = _module(n_categories=(2,), n_batch=2, encode_covariates=True).eval()
    X = _counts()
    codes = np.arange(X.shape[0])[:, None] % 2
    loc, scale = encode(module, X, batch_size=5, covariates=codes)
    with torch.no_grad():
        qz = module.inference(torch.tensor(X.toarray()), torch.as_tensor(codes))["qz"]
    np.testing.assert_allclose(loc, qz.loc.double().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scale, qz.scale.double().numpy(), rtol=1e-6, atol=1e-6)
    rows = np.array([1, 4, 9])
    loc_r, _ = encode(module, X, batch_size=2, rows=rows, covariates=codes)
    np.testing.assert_allclose(loc_r, loc[rows], rtol=1e-6, atol=1e-6)
    other, _ = encode(module, X, batch_size=5, covariates=1 - codes)
    assert not np.allclose(other, loc)
