"""The training loop: real data, save/load, determinism, settings and failures."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch

import scvae
from scvae.errors import InputError, TrainingError
from scvae.model import SCVAE

# `scvae.train` is the function; the module it lives in is reached through importlib.
train_mod = importlib.import_module("scvae.training.loop")
# The loop's behaviour under the package defaults (no preset on top).
FAST = {"preset": None, "n_latent": 4, "n_hidden": 32, "batch_size": 64, "threads": 1}


def test_two_epochs_on_real_data(pbmc_small):
    model = scvae.train(pbmc_small, max_epochs=2, **FAST)
    assert model.summary["epochs"] == 2
    assert list(model.history["epoch"]) == [1, 2]
    assert np.isfinite(model.history[["train_elbo", "val_elbo", "train_kl"]].to_numpy()).all()
    z, s = model.get_latent(pbmc_small, return_scale=True)
    assert z.shape == s.shape == (pbmc_small.n_obs, 4)
    assert (s > 0).all()
    assert set(model.split) == {"train", "validation"}


def test_save_load_round_trip_gives_the_same_latent(pbmc_small, tmp_path):
    model = scvae.train(pbmc_small, max_epochs=1, bn_gamma=0.5, **FAST)
    model.save(tmp_path / "model.pt")
    loaded = SCVAE.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(model.get_latent(pbmc_small), loaded.get_latent(pbmc_small))
    assert loaded.module.config == model.module.config
    assert loaded.summary == model.summary


def test_same_seed_gives_identical_latent_and_other_seed_differs(pbmc_small):
    a = scvae.train(pbmc_small, max_epochs=2, seed=3, **FAST).get_latent(pbmc_small)
    b = scvae.train(pbmc_small, max_epochs=2, seed=3, **FAST).get_latent(pbmc_small)
    c = scvae.train(pbmc_small, max_epochs=2, seed=4, **FAST).get_latent(pbmc_small)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_non_finite_loss_stops_with_the_epoch_and_cause(pbmc_small, tmp_path, monkeypatch):
    real = train_mod.FreeBitsELBO.loss_from_terms
    state = {"n": 0}

    def poisoned(self, t):
        state["n"] += 1
        loss = real(self, t)
        return loss * float("nan") if state["n"] > 12 else loss

    monkeypatch.setattr(train_mod.FreeBitsELBO, "loss_from_terms", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 3") as err:
        scvae.train(pbmc_small, max_epochs=5, checkpoint_every=1, checkpoint_dir=tmp_path, **FAST)
    assert "learning rate" in str(err.value)
    assert str(tmp_path / "checkpoint.pt") in str(err.value)
    assert (tmp_path / "checkpoint.pt").exists()


def test_unknown_setting_and_bad_values_are_named(pbmc_small):
    with pytest.raises(ValueError, match="bogus"):
        scvae.train(pbmc_small, bogus=1)
    with pytest.raises(ValueError, match="beta"):
        scvae.train(pbmc_small, beta=-1.0)
    with pytest.raises(ValueError, match="likelihood"):
        scvae.train(pbmc_small, likelihood="gaussian")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"free_bits": -0.1}, "training setting free_bits=-0.1 is out of range: must be >= 0"),
        ({"beta": -1.0}, "training setting beta=-1.0 is out of range: must be >= 0"),
        ({"batch_size": 1}, "batch_size=1 is out of range: must be >= 2"),
        ({"kl_schedule": "cosine"}, "kl_schedule='cosine' is not one of"),
        ({"n_latent": "ten"}, "setting n_latent='ten': expected an integer, got str"),
        ({"lr": "fast"}, "setting lr='fast': expected a number, got str"),
        ({"early_stopping": 1}, "setting early_stopping=1: expected true or false, got int"),
    ],
)
def test_bad_setting_is_rejected_before_training_with_the_key_named(
    pbmc_small, setting, message, monkeypatch
):
    monkeypatch.setattr(train_mod, "VAE", None)  # must fail before building the model
    with pytest.raises(ValueError, match=re.escape(message)):
        scvae.train(pbmc_small, **setting)


def test_normalized_input_is_rejected(pbmc_small):
    bad = pbmc_small.copy()
    bad.layers["counts"] = bad.layers["counts"].multiply(0.37).tocsr()
    with pytest.raises(InputError, match="counts"):
        scvae.train(bad, max_epochs=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error(pbmc_small):
    with pytest.raises(TrainingError, match="CUDA"):
        scvae.train(pbmc_small, device="cuda", max_epochs=1)


@pytest.mark.parametrize("n_cells", [2, 3, 5, 7])
def test_tiny_data_adapts_the_batch_size(pbmc_small, n_cells):
    tiny = pbmc_small[:n_cells].copy()
    model = scvae.train(tiny, max_epochs=2, **FAST)
    assert model.get_latent(tiny).shape == (n_cells, 4)
    assert model.summary["n_train_cells"] + model.summary["n_val_cells"] == n_cells
    assert np.isfinite(model.history["train_elbo"]).all()


def test_fewer_cells_than_the_minimum_is_a_clear_error(pbmc_small):
    assert train_mod.MIN_CELLS == 2
    with pytest.raises(InputError) as err:
        scvae.train(pbmc_small[:1].copy(), source="cells.h5ad", max_epochs=1, **FAST)
    msg = str(err.value)
    assert msg.startswith("cells.h5ad: 1 cell(s); training needs at least 2")


def test_non_finite_loss_before_any_checkpoint_says_so(pbmc_small, tmp_path):
    # A learning rate this large really diverges on the first step: no test hook needed.
    with pytest.raises(TrainingError) as err:
        scvae.train(pbmc_small, max_epochs=2, lr=1e6, checkpoint_dir=tmp_path, **FAST)
    msg = str(err.value)
    assert "non-finite loss" in msg and "at epoch 1" in msg and "lr=1e+06" in msg
    assert "No checkpoint had been written yet" in msg
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- batches and covariates


def test_a_conditional_model_trains_on_two_batches(two_batches):
    model = scvae.train(
        two_batches, batch_key="batch", covariate_keys=["donor"], max_epochs=3, **FAST
    )
    cfg = model.module.config
    assert cfg.n_categories == (2, 3) and cfg.n_batch == 2
    assert model.categories == {"batch": ["a", "b"], "donor": ["d1", "d2", "d3"]}
    assert model.batch_key == "batch" and model.covariate_keys == ("donor",)
    assert np.isfinite(model.history[["train_elbo", "val_elbo"]].to_numpy()).all()
    z = model.get_latent(two_batches)
    assert z.shape == (two_batches.n_obs, 4) and np.isfinite(z).all()


def test_the_batch_alone_and_a_per_batch_library_prior(two_batches):
    model = scvae.train(two_batches, batch_key="batch", library="latent", max_epochs=1, **FAST)
    assert model.module.config.n_categories == (2,)
    log_lib = np.log(np.asarray(two_batches.X.sum(1)).ravel())
    train_rows = model.split == "train"
    for code, name in enumerate(model.categories["batch"]):
        rows = train_rows & (two_batches.obs["batch"] == name).to_numpy()
        assert model.module.library_log_mean[code].item() == pytest.approx(
            log_lib[rows].mean(), rel=1e-5
        )


def test_condition_on_batch_false_trains_the_unconditional_model(two_batches):
    settings = dict(max_epochs=2, seed=1, **FAST)
    plain = scvae.train(two_batches, **settings)
    ignored = scvae.train(two_batches, batch_key="batch", condition_on_batch=False, **settings)
    assert ignored.module.config.n_categories == () and ignored.categories == {}
    assert ignored.batch_key == "batch"  # kept for the diagnostics
    np.testing.assert_array_equal(plain.get_latent(two_batches), ignored.get_latent(two_batches))


def test_missing_or_empty_batch_columns_are_named(two_batches):
    with pytest.raises(InputError, match=r"no obs column 'plate' \(the columns are \['label'"):
        scvae.train(two_batches, batch_key="plate", max_epochs=1, **FAST)
    with pytest.raises(InputError, match="'donor'.*given twice"):
        scvae.train(two_batches, batch_key="donor", covariate_keys=["donor"], **FAST)
    two_batches.obs["batch"] = two_batches.obs["batch"].astype(object)
    two_batches.obs.iloc[:3, two_batches.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(InputError, match="'batch' has 3 empty"):
        scvae.train(two_batches, batch_key="batch", max_epochs=1, **FAST)


def test_a_conditional_model_trains_on_cellbench(cellbench):
    model = scvae.train(
        cellbench,
        batch_key="batch",
        max_epochs=3,
        decoder_layers=0,
        dispersion="gene-batch",
        calibrated_dispersion=True,
        **FAST,
    )
    assert model.module.config.n_categories == (5,)
    assert model.module.px_log_theta.shape == (5, cellbench.n_vars)
    assert np.isfinite(model.history["val_elbo"]).all()
    # The history improves: the conditional model learns.
    assert model.history["train_elbo"].iloc[-1] > model.history["train_elbo"].iloc[0]


def test_counts_that_went_through_float32_train_as_their_integers(pbmc_small):
    nudged = pbmc_small.copy()
    counts = nudged.layers["counts"]
    counts.data = np.nextafter(counts.data, np.float32(np.inf))  # one float32 step up
    with pytest.warns(UserWarning, match=rf"rounded {counts.nnz} value\(s\)"):
        model = scvae.train(nudged, max_epochs=1, **FAST)
    reference = scvae.train(pbmc_small, max_epochs=1, **FAST)
    columns = ["train_elbo", "train_kl", "val_elbo"]
    assert model.history[columns].equals(reference.history[columns])
    assert (counts.data != np.round(counts.data)).all()  # the caller's data are left as they were
