"""Training: real data, save/load, resume after interruption, determinism, failures."""

from __future__ import annotations

import importlib

import anndata
import h5py
import numpy as np
import pyro
import pytest
import torch
from scipy import sparse

import scvae
from scvae.errors import InputError, TrainingError
from scvae.model import SCVAE

# `scvae.train` is the function; the module it lives in is reached through importlib.
train_mod = importlib.import_module("scvae.train")
FAST = {"n_latent": 4, "n_hidden": 32, "batch_size": 64, "threads": 1}


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def pbmc_small(shared_data) -> anndata.AnnData:
    """400 cells x 300 genes of the real PBMC 4k counts, with labels."""
    with h5py.File(shared_data / "pbmc4k_top2000.h5") as f:
        X = np.asarray(f["X"][:400, :300], dtype=np.float32)
        y = np.asarray(f["Y"][:400]).astype(int)
    keep = X.sum(1) > 0
    X = sparse.csr_matrix(X[keep])
    adata = anndata.AnnData(X)
    adata.layers["counts"] = X.copy()
    adata.obs["label"] = y[keep].astype(str)
    return adata


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


def test_resume_after_interruption_continues_the_epoch_count(pbmc_small, tmp_path, monkeypatch):
    settings = dict(max_epochs=4, checkpoint_every=2, kl_schedule="linear", warmup_fraction=0.5)
    reference = scvae.train(pbmc_small, **settings, **FAST)

    real_evaluate = train_mod._evaluate
    calls = {"n": 0}

    def dies_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill would, mid-run
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_evaluate", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        scvae.train(pbmc_small, checkpoint_dir=tmp_path, **settings, **FAST)
    monkeypatch.setattr(train_mod, "_evaluate", real_evaluate)
    assert (tmp_path / "checkpoint.pt").exists()

    resumed = scvae.train(pbmc_small, checkpoint_dir=tmp_path, **settings, **FAST)
    assert list(resumed.history["epoch"]) == [1, 2, 3, 4]
    # Same batches and random draws as the uninterrupted run.
    np.testing.assert_allclose(
        resumed.get_latent(pbmc_small), reference.get_latent(pbmc_small), rtol=0, atol=1e-6
    )


def test_checkpoint_with_other_settings_is_not_resumed(pbmc_small, tmp_path):
    scvae.train(pbmc_small, max_epochs=2, checkpoint_dir=tmp_path, **FAST)
    again = scvae.train(pbmc_small, max_epochs=2, beta=2.0, checkpoint_dir=tmp_path, **FAST)
    assert list(again.history["epoch"]) == [1, 2]


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


def test_normalized_input_is_rejected(pbmc_small):
    bad = pbmc_small.copy()
    bad.layers["counts"] = bad.layers["counts"].multiply(0.37).tocsr()
    with pytest.raises(InputError, match="counts"):
        scvae.train(bad, max_epochs=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error(pbmc_small):
    with pytest.raises(TrainingError, match="CUDA"):
        scvae.train(pbmc_small, device="cuda", max_epochs=1)


def test_tiny_data_adapts_the_batch_size(pbmc_small):
    tiny = pbmc_small[:7].copy()
    model = scvae.train(tiny, max_epochs=2, **FAST)
    assert model.get_latent(tiny).shape == (7, 4)
