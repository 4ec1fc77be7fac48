"""Checkpoints: save/load, the run hash, resuming after interruption, stale files."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

import scvae
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.checkpoint import (
    CHECKPOINT_NAME,
    RESUMABLE_KEYS,
    TrainState,
    checkpoint_note,
    load_checkpoint,
    save_checkpoint,
    training_hash,
)
from scvae.training.settings import TrainConfig

# `scvae.train` is the function; the module it lives in is reached through importlib.
train_mod = importlib.import_module("scvae.training.loop")
FAST = {"n_latent": 4, "n_hidden": 32, "batch_size": 64, "threads": 1}


def _vae(seed=0, **kw):
    torch.manual_seed(seed)
    return VAE(VAEConfig(n_input=12, n_latent=2, n_hidden=8, **kw))


def _trained(seed=0):
    """A small VAE and its Adam after one step, so that the optimizer has state."""
    vae = _vae(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    x = torch.poisson(torch.full((16, 12), 2.0))
    vae.inference(x)["qz"].loc.sum().backward()
    optimizer.step()
    return vae, optimizer


def _hash(model_cfg=None, cfg=None, module=None, block_size=None):
    model_cfg = model_cfg or VAEConfig(n_input=12, n_latent=2, n_hidden=8)
    return training_hash(
        model_cfg, cfg or TrainConfig(), (30, 12), 100, module or VAE(model_cfg), block_size
    )


def test_save_then_load_restores_network_optimizer_state_and_random_state(tmp_path):
    vae, optimizer = _trained()
    state = TrainState(epoch=3, step=42, best_val=-1.5, history=[{"epoch": 3}])
    path = tmp_path / CHECKPOINT_NAME
    torch.manual_seed(7)
    save_checkpoint(path, vae, optimizer, state, "abc")
    expected_draw = torch.rand(3)

    other, other_optimizer = _trained(seed=1)
    torch.manual_seed(123)
    loaded = load_checkpoint(path, other, other_optimizer, "abc", torch.device("cpu"))
    assert loaded == state
    for k, v in vae.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert other_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    assert torch.equal(torch.rand(3), expected_draw)  # the same draws as after the save


def test_no_checkpoint_an_unreadable_one_or_another_runs_start_from_scratch(tmp_path, caplog):
    vae, optimizer = _trained()
    path = tmp_path / CHECKPOINT_NAME
    cpu = torch.device("cpu")
    assert load_checkpoint(path, vae, optimizer, "abc", cpu) is None

    path.write_bytes(b"half a checkpoint")
    with caplog.at_level("WARNING", logger="scvae.training.checkpoint"):
        assert load_checkpoint(path, vae, optimizer, "abc", cpu) is None
    assert "unreadable checkpoint" in caplog.text

    save_checkpoint(path, vae, optimizer, TrainState(epoch=1), "abc")
    other, other_optimizer = _trained(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert load_checkpoint(path, other, other_optimizer, "xyz", cpu) is None
    assert "other settings, data or model layers" in caplog.text
    for k, v in before.items():
        assert torch.equal(other.state_dict()[k], v), k


def test_train_state_defaults_are_a_fresh_start():
    state = TrainState()
    assert (state.epoch, state.step, state.bad_epochs, state.history) == (0, 0, 0, [])
    assert state.best_val == state.best_val_mi == -math.inf
    assert state.aggressive and not state.stopped_early
    assert TrainState().history is not state.history


def test_hash_ignores_the_resumable_settings_only():
    base = _hash()
    assert set(RESUMABLE_KEYS) == {"checkpoint_every", "threads", "device"}
    assert _hash(cfg=TrainConfig(checkpoint_every=3, threads=2, device="cpu")) == base
    assert _hash(cfg=TrainConfig(lr=2e-3)) != base
    assert _hash(model_cfg=VAEConfig(n_input=12, n_latent=3, n_hidden=8)) != base
    assert _hash(block_size=256) != base


def test_hash_changes_with_the_layers_the_settings_build():
    model_cfg = VAEConfig(n_input=12, n_latent=2, n_hidden=8)
    wider = VAE(model_cfg)
    wider.extra = torch.nn.Linear(2, 2)
    assert _hash(module=wider) != _hash()


def test_checkpoint_note_names_the_kept_checkpoint_or_its_absence(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    assert checkpoint_note(None) == ""
    assert checkpoint_note(path) == f". No checkpoint had been written yet to {tmp_path}"
    path.write_bytes(b"")
    assert checkpoint_note(path) == f". The last good checkpoint is kept at {path}"


# ------------------------------------------------------------ resuming a training run


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


def test_stale_checkpoint_temp_file_of_a_killed_write_is_removed(pbmc_small, tmp_path):
    stale = tmp_path / ".checkpoint.pt.abc123.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    scvae.train(pbmc_small, max_epochs=1, checkpoint_dir=tmp_path, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_checkpoint_of_other_model_layers_is_not_resumed(pbmc_small, tmp_path, monkeypatch, caplog):
    # Same settings, but a newer scvae builds other layers from them: the checkpoint of the
    # old layers must be ignored, not crash the rerun.
    scvae.train(pbmc_small, max_epochs=2, checkpoint_every=1, checkpoint_dir=tmp_path, **FAST)

    class WiderVAE(train_mod.VAE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.extra = torch.nn.Linear(2, 2)

    monkeypatch.setattr(train_mod, "VAE", WiderVAE)
    with caplog.at_level("INFO", logger="scvae.training.checkpoint"):
        again = scvae.train(
            pbmc_small, max_epochs=2, checkpoint_every=1, checkpoint_dir=tmp_path, **FAST
        )
    assert list(again.history["epoch"]) == [1, 2]
    assert "training from scratch" in caplog.text and "resuming from" not in caplog.text


def test_hash_changes_with_the_covariate_codes_and_categories():
    model_cfg = VAEConfig(n_input=12, n_latent=2, n_hidden=8, n_categories=(2,), n_batch=2)
    module = VAE(model_cfg)

    def h(codes, categories):
        return training_hash(
            model_cfg, TrainConfig(), (30, 12), 100, module, None, codes, categories
        )

    codes = (np.arange(30) % 2)[:, None]
    cats = {"batch": ["a", "b"]}
    assert h(codes, cats) == h(codes.copy(), {"batch": ["a", "b"]})
    assert h(codes, cats) != h(1 - codes, cats)
    assert h(codes, cats) != h(codes, {"batch": ["a", "c"]})
    assert h(codes, cats) != _hash(model_cfg, module=module)


def test_resume_with_the_same_codes_and_not_with_others(two_batches, tmp_path, caplog):
    settings = dict(max_epochs=2, checkpoint_every=1, batch_key="batch", **FAST)
    first = scvae.train(two_batches, checkpoint_dir=tmp_path, **settings)
    with caplog.at_level("INFO", logger="scvae.training.checkpoint"):
        again = scvae.train(two_batches, checkpoint_dir=tmp_path, **settings)
    assert "resuming from" in caplog.text
    np.testing.assert_array_equal(again.get_latent(two_batches), first.get_latent(two_batches))

    # Other batch assignments: the checkpoint is not resumed.
    swapped = two_batches.copy()
    swapped.obs["batch"] = swapped.obs["batch"].cat.rename_categories({"a": "b", "b": "a"})
    caplog.clear()
    with caplog.at_level("INFO", logger="scvae.training.checkpoint"):
        scvae.train(swapped, checkpoint_dir=tmp_path, **settings)
    assert "training from scratch" in caplog.text and "resuming from" not in caplog.text
