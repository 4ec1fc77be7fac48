"""The decoder Jacobian against finite differences, and the NaN-safe rank correlation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from scvae.diagnostics.jacobian import decoder_jacobian, kl_sensitivity_spearman


def _fd_gram(module, loc, library, x, h=1e-6, c=None):
    """mean_i J_i^T J_i of d log_mu / dz by central differences (at each cell's codes)."""
    grams = []
    for i in range(loc.shape[0]):
        cols = []
        for a in range(loc.shape[1]):
            step = torch.zeros_like(loc[i : i + 1])
            step[0, a] = h

            def f(z, i=i):
                xi = None if x is None else x[i : i + 1]
                ci = None if c is None else c[i : i + 1]
                return module.generative(z, library[i : i + 1], xi, ci)["log_mu"][0]

            cols.append((f(loc[i : i + 1] + step) - f(loc[i : i + 1] - step)) / (2 * h))
        J = torch.stack(cols, 1)
        grams.append(J.T @ J)
    return torch.stack(grams).mean(0)


@pytest.mark.parametrize("skip", ["none", "gated"])
def test_decoder_jacobian_matches_finite_differences(skip, tiny_vae, tiny_counts):
    module = tiny_vae(skip=skip, decoder_layers=2)
    module.train()  # the function must switch to eval mode itself, and back
    X = tiny_counts(n_cells=6)
    x = torch.tensor(X.toarray(), dtype=torch.float64)
    loc = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    library = x.sum(1, keepdim=True)
    out = decoder_jacobian(module, loc, library, X if skip != "none" else None, n_cells=100)
    assert module.training
    module.eval()
    with torch.no_grad():
        expected = _fd_gram(module, loc, library, x if skip != "none" else None)
    np.testing.assert_allclose(out["jtj"], expected.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["sensitivity_per_dim"], np.diag(expected.numpy()), rtol=1e-6)
    eig = np.linalg.eigvalsh(expected.numpy())[::-1]
    np.testing.assert_allclose(out["jtj_eigenvalues"], eig, rtol=1e-6, atol=1e-12)
    assert out["n_cells"] == 6


def test_decoder_ignoring_a_dimension_has_zero_sensitivity(tiny_vae):
    module = tiny_vae(n_latent=4)
    with torch.no_grad():
        module.decoder[0].weight[:, 2] = 0.0
    loc = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    out = decoder_jacobian(
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
        assert math.isnan(kl_sensitivity_spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
        assert math.isnan(kl_sensitivity_spearman([1.0], [2.0]))
        assert math.isnan(kl_sensitivity_spearman([1.0, np.nan], [2.0, 3.0]))
    assert kl_sensitivity_spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)


@pytest.mark.parametrize("decoder_layers", [0, 2])
def test_a_conditional_decoders_jacobian_is_taken_at_each_cells_covariates(
    decoder_layers, tiny_vae
):
    module = tiny_vae(decoder_layers=decoder_layers, n_categories=(3,), n_batch=3)
    loc = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    library = torch.full((9, 1), 50.0, dtype=torch.float64)
    codes = (np.arange(9) % 3)[:, None]
    out = decoder_jacobian(module, loc, library, n_cells=100, covariates=codes)
    with torch.no_grad():
        expected = _fd_gram(module, loc, library, None, c=torch.as_tensor(codes))
    np.testing.assert_allclose(out["jtj"], expected.numpy(), rtol=1e-6, atol=1e-9)
    if decoder_layers:  # the batch enters the hidden layers, so it changes the Jacobian
        other = decoder_jacobian(module, loc, library, n_cells=100, covariates=(codes + 1) % 3)
        assert not np.allclose(other["jtj"], out["jtj"])
