"""SCVAE: covariate codes from obs, save/load of the categories, get_latent's errors."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scvae.errors import InputError
from scvae.model import SCVAE, covariate_categories, covariate_codes, recorded_covariates
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.settings import TrainConfig

CATEGORIES = {"batch": ["p1", "p2", "p3"], "donor": ["1", "2"]}


def _cells(n=30) -> anndata.AnnData:
    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(rng.poisson(2.0, size=(n, 8)).astype(np.float32))
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(np.array(["p3", "p1", "p2"])[np.arange(n) % 3]),
            "donor": np.arange(n) % 2 + 1,  # integers: read as their strings
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = anndata.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(8)]))
    adata.layers["counts"] = X.copy()
    return adata


def _model() -> SCVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(n_input=8, n_latent=2, n_hidden=8, n_categories=(3, 2), n_batch=3)
    module = VAE(cfg, library_log_mean=[1.0, 2.0, 3.0]).eval()
    names = [f"g{j}" for j in range(8)]
    return SCVAE(
        module,
        TrainConfig(),
        names,
        batch_key="batch",
        covariate_keys=["donor"],
        categories=CATEGORIES,
    )


def test_categories_are_sorted_strings_and_codes_their_positions():
    adata = _cells()
    assert covariate_categories(adata, ["batch", "donor"]) == CATEGORIES
    codes = covariate_codes(adata, CATEGORIES)
    assert codes.dtype == np.int64 and codes.shape == (30, 2)
    np.testing.assert_array_equal(codes[:3], [[2, 0], [0, 1], [1, 0]])
    assert covariate_codes(adata, {}) is None


def test_save_load_round_trips_the_covariates(tmp_path):
    model, adata = _model(), _cells()
    model.save(tmp_path / "model.pt")
    loaded = SCVAE.load(tmp_path / "model.pt")
    assert loaded.categories == CATEGORIES
    assert loaded.batch_key == "batch" and loaded.covariate_keys == ("donor",)
    assert loaded.module.config == model.module.config
    torch.testing.assert_close(loaded.module.library_log_mean, torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(loaded.get_latent(adata), model.get_latent(adata))


def test_get_latent_reads_each_cells_covariates():
    model, adata = _model(), _cells()
    z = model.get_latent(adata)
    # Reordering the categories of the column does not change the codes.
    adata.obs["batch"] = adata.obs["batch"].cat.reorder_categories(["p3", "p2", "p1"])
    np.testing.assert_array_equal(model.get_latent(adata), z)


def test_get_latent_names_unknown_categories_and_missing_columns():
    model, adata = _model(), _cells()
    adata.obs["batch"] = adata.obs["batch"].cat.rename_categories({"p3": "p9"})
    with pytest.raises(InputError, match=r"'batch' holds categories .* \['p9'\]"):
        model.get_latent(adata)
    adata = _cells()
    del adata.obs["donor"]
    with pytest.raises(InputError, match=r"no obs column 'donor' \(the columns are \['batch'\]"):
        model.get_latent(adata)


def test_an_unconditional_model_needs_no_covariates():
    torch.manual_seed(0)
    module = VAE(VAEConfig(n_input=8, n_latent=2, n_hidden=8)).eval()
    model = SCVAE(module, TrainConfig(), [f"g{j}" for j in range(8)], batch_key="batch")
    adata = _cells()
    del adata.obs["batch"]
    assert model.get_latent(adata).shape == (30, 2)
    with pytest.raises(ValueError, match="do not match"):
        SCVAE(module, TrainConfig(), [f"g{j}" for j in range(8)], categories=CATEGORIES)


def test_recorded_covariates_read_the_preprocessing_record():
    adata = _cells()
    assert recorded_covariates(adata) == (None, [])
    adata.uns["scvae"] = {"preprocess": {"batch_key": "batch", "covariate_keys": np.array(["d"])}}
    assert recorded_covariates(adata) == ("batch", ["d"])


def test_normalized_expression_is_the_decoders_proportions_times_a_library_size():
    model, adata = _model(), _cells()
    expr = model.get_normalized_expression(adata)
    assert expr.shape == (30, 8) and expr.dtype == np.float32
    np.testing.assert_allclose(expr.sum(1), 1e4, rtol=1e-4)
    # The decoder's mean at the posterior mean, with library 1: by hand.
    x = torch.as_tensor(adata.layers["counts"].toarray())
    c = torch.as_tensor(model.covariate_codes(adata))
    with torch.no_grad():
        z = model.module.inference(x, c)["qz"].loc
        rho = model.module.generative(z, torch.ones(30, 1), x, c)["log_mu"].exp()
    np.testing.assert_allclose(expr, 1e4 * rho.numpy(), rtol=1e-5)
    observed = model.get_normalized_expression(adata, library_size="observed")
    np.testing.assert_allclose(observed.sum(1), x.sum(1).numpy(), rtol=1e-4)


def test_normalized_expression_as_if_every_cell_came_from_one_batch():
    model, adata = _model(), _cells()
    own = model.get_normalized_expression(adata)
    as_p1 = model.get_normalized_expression(adata, transform_batch="p1")
    in_p1 = (adata.obs["batch"] == "p1").to_numpy()
    np.testing.assert_allclose(as_p1[in_p1], own[in_p1], rtol=1e-6)
    assert not np.allclose(as_p1[~in_p1], own[~in_p1])
    with pytest.raises(InputError, match="not one of the model's batches"):
        model.get_normalized_expression(adata, transform_batch="p9")
    with pytest.raises(InputError, match="a number or 'observed'"):
        model.get_normalized_expression(adata, library_size="median")
    module = VAE(VAEConfig(n_input=8, n_latent=2, n_hidden=8)).eval()
    plain = SCVAE(module, TrainConfig(), model.var_names)
    with pytest.raises(InputError, match="not conditioned on a batch"):
        plain.get_normalized_expression(adata, transform_batch="p1")
