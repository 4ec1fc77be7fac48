"""SCVAE: covariate codes from obs, save/load of the categories, get_latent's errors."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scvae.data.covariates import covariate_categories, covariate_codes, recorded_covariates
from scvae.errors import InputError
from scvae.model import SCVAE
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
    return SCVAE.from_module(
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
    model = SCVAE.from_module(module, TrainConfig(), [f"g{j}" for j in range(8)], batch_key="batch")
    adata = _cells()
    del adata.obs["batch"]
    assert model.get_latent(adata).shape == (30, 2)
    with pytest.raises(ValueError, match="do not match"):
        SCVAE.from_module(module, TrainConfig(), [f"g{j}" for j in range(8)], categories=CATEGORIES)


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
    plain = SCVAE.from_module(module, TrainConfig(), model.var_names)
    with pytest.raises(InputError, match="not conditioned on a batch"):
        plain.get_normalized_expression(adata, transform_batch="p1")


# --- the model object: setup_anndata, a preset, train(), methods on the data -------------

FAST = {"max_epochs": 2, "n_hidden": 8, "batch_size": 10, "progress": False}


def test_setup_anndata_registers_the_fields_and_checks_them():
    adata = _cells()
    SCVAE.setup_anndata(adata, batch_key="batch", covariate_keys=["donor"])
    assert adata.uns["scvae"]["setup"] == {
        "layer": "counts",
        "batch_key": "batch",
        "covariate_keys": ["donor"],
    }
    model = SCVAE(adata)
    assert (model.layer, model.batch_key, model.covariate_keys) == ("counts", "batch", ("donor",))
    with pytest.raises(InputError, match="no obs column 'plate'"):
        SCVAE.setup_anndata(adata, batch_key="plate")
    with pytest.raises(InputError, match="no layer 'raw'"):
        SCVAE.setup_anndata(adata, layer="raw")


def test_a_model_starts_from_recommended_and_its_batch_form():
    from scvae.presets import preset_settings

    adata = _cells()
    plain = SCVAE(adata)
    assert plain.preset == "recommended" and not plain.is_trained
    assert plain.settings == preset_settings("recommended")
    batched = SCVAE(adata, batch_key="batch", n_hidden=16)
    assert batched.settings == {**preset_settings("recommended", batches=True), "n_hidden": 16}
    assert SCVAE(adata, preset=None).settings == SCVAE(adata, preset="vanilla").settings
    with pytest.raises(KeyError, match="unknown preset"):
        SCVAE(adata, preset="recomended")
    with pytest.raises(ValueError, match="n_latnet"):
        SCVAE(adata, n_latnet=3)  # a typo fails before any training


def test_the_old_constructor_spelling_says_what_to_use():
    # SCVAE(module, ...) built a trained model before the model object; the documented
    # ways were scvae.train and SCVAE.load (now also SCVAE.from_module).
    with pytest.raises(TypeError, match="SCVAE.load"):
        SCVAE(_model().module)
    import scvae.training

    with pytest.raises(AttributeError, match="scvae.train"):
        scvae.training.train  # noqa: B018


def test_an_untrained_model_says_to_train_it_first():
    model = SCVAE(_cells())
    with pytest.raises(ValueError, match="not trained yet"):
        model.get_latent()


def test_train_fits_the_registered_data_and_methods_default_to_it(tmp_path):
    adata = _cells(40)
    SCVAE.setup_anndata(adata, batch_key="batch")
    model = SCVAE(adata, n_latent=3)
    with pytest.raises(ValueError, match="model settings"):
        model.train(n_latent=4)
    model.train(**{k: v for k, v in FAST.items() if k not in ("n_hidden",)})
    assert model.is_trained and model.summary["epochs"] == 2
    assert model.categories == {"batch": ["p1", "p2", "p3"]}
    z = model.get_latent()
    assert z.shape == (40, 3)
    assert model.get_normalized_expression().shape == (40, 8)
    model.save(tmp_path / "m.pt")
    loaded = SCVAE.load(tmp_path / "m.pt")
    assert loaded.preset == "recommended" and loaded.batch_key == "batch"
    assert loaded.layer == "counts" and loaded.settings["n_latent"] == 3
    np.testing.assert_array_equal(loaded.get_latent(adata), z)
    with pytest.raises(ValueError, match="pass an AnnData"):
        loaded.get_latent()
    assert "trained, 2 epochs" in repr(loaded)


def test_scvae_train_without_arguments_trains_recommended():
    import scvae

    model = scvae.train(_cells(40), max_epochs=1, progress=False)
    assert model.preset == "recommended"
    assert model.module.config.n_latent == 20 and model.module.config.decoder_layers == 0
    assert model.train_config.calibrated_dispersion and model.train_config.free_bits == 0.5
