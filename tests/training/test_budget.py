"""The training budget in cells seen: warm-up, cap, validation cadence and subsample.

``scvae.training.loop`` with ``warmup_cells``, ``max_cells``, ``val_every_cells`` and
``val_max_cells`` (``scvae.training.settings.TrainConfig``); at 0 they train exactly as
before they existed.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.checkpoint import CHECKPOINT_KIND, CHECKPOINT_NAME, training_hash
from scvae.training.settings import TrainConfig
from scvae.utils.torchfile import load_tensor_file, save_tensor_file

# The module, not the `scvae.train` function of the same name.
train_mod = importlib.import_module("scvae.training.loop")
FAST = {"n_latent": 4, "n_hidden": 32, "batch_size": 64, "threads": 1}
# What scvae.train recorded before the budget settings existed (commit a746ed3), for
# `pbmc_small` with batch "a"/"b" alternating over the cells: recommended's schedule with
# early stopping forced after 2 validations, and the sigmoid schedule with batches and
# the aggressive phase.
BEFORE = {
    "annealed_early_stopping": {
        "settings": dict(
            max_epochs=10,
            decoder_layers=0,
            kl_schedule="linear",
            warmup_fraction=0.5,
            free_bits=0.5,
            calibrated_dispersion=True,
            patience=2,
            min_delta=1e6,
        ),
        "batch": False,
        "step": [6, 12, 18, 24, 30, 36, 42],
        "kl_weight": [1 / 6, 11 / 30, 17 / 30, 23 / 30, 29 / 30, 1.0, 1.0],
        "train_elbo": [-203.7287, -187.786, -187.5508, -186.1543, -183.7733, -178.5988, -173.9287],
        "val_elbo": [-214.3512, -210.9343, -203.8547, -200.7679, -193.3149, -188.3026, -182.1686],
    },
    "batches_aggressive": {
        "settings": dict(
            max_epochs=3,
            aggressive_epochs=2,
            aggressive_steps=3,
            kl_schedule="sigmoid",
            warmup_fraction=1.0,
        ),
        "batch": True,
        "step": [6, 12, 18],
        "kl_weight": [0.06496, 0.7914, 0.9952],
        "train_elbo": [-215.7862, -189.8514, -169.2029],
        "val_elbo": [-235.1294, -211.3811, -194.4497],
    },
}


def _fit(adata, checkpoint_dir=None, **settings):
    return train_mod.fit(adata, {**FAST, **settings}, checkpoint_dir=checkpoint_dir, progress=False)


def _run(adata, **settings) -> train_mod.TrainingRun:
    """A run built and not trained (its split, loaders, schedule and clock)."""
    return train_mod.build_run(adata.layers["counts"], {**FAST, **settings}, None)


# --------------------------------------------------------------- the old defaults


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_at_their_defaults_the_budget_settings_train_exactly_as_before(pbmc_small, case):
    expected = BEFORE[case]
    adata = pbmc_small.copy()
    adata.obs["batch"] = pd.Categorical(np.array(["a", "b"])[np.arange(adata.n_obs) % 2])
    batch_key = "batch" if expected["batch"] else None
    result = train_mod.fit(
        adata, {**FAST, **expected["settings"]}, batch_key=batch_key, progress=False
    )
    history = result.history
    assert list(history["epoch"]) == list(range(1, len(expected["step"]) + 1))
    assert list(history["step"]) == expected["step"]
    # One row per epoch, and every cell of the epoch seen.
    assert list(history["cells_seen"]) == [s // 6 * 360 for s in expected["step"]]
    np.testing.assert_allclose(history["kl_weight"], expected["kl_weight"], rtol=1e-3)
    for column in ("train_elbo", "val_elbo"):
        np.testing.assert_allclose(history[column], expected[column], rtol=1e-5, err_msg=column)


def test_the_run_hash_of_the_old_settings_is_unchanged():
    # Checkpoints and config hashes written before the budget settings existed stay valid.
    model_cfg = VAEConfig(n_input=12, n_latent=2, n_hidden=8)
    torch.manual_seed(0)
    module = VAE(model_cfg)
    cfg = TrainConfig(kl_schedule="linear", warmup_fraction=0.5)
    assert training_hash(model_cfg, cfg, (30, 12), 100, module, None) == "c794a096ef9a5d1e"
    for key in ("max_cells", "warmup_cells", "val_every_cells", "val_max_cells"):
        other = TrainConfig(kl_schedule="linear", warmup_fraction=0.5, **{key: 1000})
        assert training_hash(model_cfg, other, (30, 12), 100, module, None) != "c794a096ef9a5d1e"


@pytest.mark.parametrize("key", ["max_cells", "warmup_cells", "val_every_cells", "val_max_cells"])
def test_a_negative_budget_is_rejected_with_the_key_named(key):
    with pytest.raises(
        ValueError, match=f"training setting {key}=-1 is out of range: must be >= 0"
    ):
        TrainConfig(**{key: -1})


# --------------------------------------------------------------- the KL warm-up in cells


@pytest.mark.parametrize("batch_size", [32, 64, 100])
def test_the_warmup_in_cells_does_not_depend_on_the_batch_size(pbmc_small, batch_size):
    settings = dict(kl_schedule="linear", warmup_fraction=0.5, max_epochs=100)
    run = _run(pbmc_small, **settings, warmup_cells=2000, batch_size=batch_size)
    budget = train_mod.budget_summary(run)
    # Ends at the first step that has seen 2,000 cells, whatever the batch size.
    assert 2000 <= budget["warmup_end_cells"] < 2000 + batch_size
    assert budget["warmup_end_step"] == run.clock.steps_to(2000)
    assert (
        run.schedule(budget["warmup_end_step"] - 1) < 1.0 == run.schedule(budget["warmup_end_step"])
    )
    # Without the bound the warm-up is half of the 100 epochs, ~18,000 cells.
    unbounded = train_mod.budget_summary(_run(pbmc_small, **settings, batch_size=batch_size))
    assert unbounded["warmup_end_cells"] == pytest.approx(50 * 360, abs=batch_size)


def test_the_warmup_is_the_shorter_of_its_fraction_and_its_cells(pbmc_small):
    # 10 epochs of 360 cells: half of them is 1,800 cells, below 100,000.
    run = _run(
        pbmc_small, kl_schedule="linear", warmup_fraction=0.5, max_epochs=10, warmup_cells=100_000
    )
    assert train_mod.budget_summary(run)["warmup_end_cells"] == 1800
    # Under a cap in cells, the fraction is of the capped length.
    capped = _run(
        pbmc_small, kl_schedule="linear", warmup_fraction=0.5, max_epochs=10, max_cells=720
    )
    assert capped.schedule.total_steps == 12
    assert train_mod.budget_summary(capped)["warmup_end_cells"] == 360


# --------------------------------------------------------------- validation


def test_validation_uses_a_fixed_bounded_subsample_of_the_held_out_cells(pbmc_small):
    run = _run(pbmc_small, val_fraction=0.5, val_max_cells=50)
    rows = run.val_loader.indices
    assert len(run.val_idx) > 150 and len(rows) == 50 == len(run.val_rows)
    assert np.isin(rows, run.val_idx).all() and (np.diff(rows) > 0).all()
    assert not np.isin(rows, run.train_idx).any()
    again = _run(pbmc_small, val_fraction=0.5, val_max_cells=50)
    np.testing.assert_array_equal(again.val_loader.indices, rows)
    other = _run(pbmc_small, val_fraction=0.5, val_max_cells=50, seed=1)
    assert not np.array_equal(np.sort(other.val_loader.indices), rows)
    # The split is that of the seed either way; without a bound every held-out cell counts.
    full = _run(pbmc_small, val_fraction=0.5)
    np.testing.assert_array_equal(full.val_idx, run.val_idx)
    np.testing.assert_array_equal(full.val_loader.indices, run.val_idx)
    assert len(_run(pbmc_small, val_fraction=0.5, val_max_cells=10_000).val_rows) == len(
        run.val_idx
    )


def test_validation_every_so_many_cells_gives_one_history_row_each(pbmc_small):
    # 360 training cells per epoch in batches of 64, 64, 64, 64, 64, 40.
    result = _fit(pbmc_small, max_epochs=3, val_every_cells=250, val_max_cells=20)
    history = result.history
    cells = list(history["cells_seen"])
    # The first step at or past each multiple of 250, and a last row at the end (1,080).
    assert cells == [256, 552, 784, 1040, 1080]
    assert list(history["step"]) == [4, 9, 13, 17, 18]
    assert list(history["epoch"]) == [1, 2, 3, 3, 3]
    assert np.isfinite(history[["train_elbo", "val_elbo", "val_kl"]].to_numpy()).all()
    assert history["seconds"].is_monotonic_increasing


def test_a_cadence_of_an_epoch_or_more_validates_once_per_epoch(pbmc_small):
    # 360 training cells per epoch: a cadence of 360 or more changes nothing, so the
    # datasets the suite measured train as they did.
    per_epoch = _fit(pbmc_small, max_epochs=3)
    for every in (360, 4000):
        slower = _fit(pbmc_small, max_epochs=3, val_every_cells=every)
        assert slower.train_config.val_every_cells == every  # the setting as given
        pd.testing.assert_frame_equal(
            slower.history.drop(columns="seconds"), per_epoch.history.drop(columns="seconds")
        )


# --------------------------------------------------------------- how training ends


def test_the_cap_in_cells_stops_mid_epoch(pbmc_small):
    result = _fit(pbmc_small, max_epochs=50, max_cells=1000)
    last = result.history.iloc[-1]
    # 1,000 cells: the 2nd step of the 3rd epoch (720 + 64 + 64 + 64 + 64 = 976, then 1,040).
    assert (last["epoch"], last["step"], last["cells_seen"]) == (3, 17, 1040)
    assert list(result.history["epoch"]) == [1, 2, 3]
    assert result.summary["steps"] == 17 and result.summary["epochs"] == 3


def test_early_stopping_decides_the_length_after_the_warmup(pbmc_small):
    settings = dict(
        kl_schedule="linear",
        warmup_fraction=0.5,
        warmup_cells=3000,
        max_epochs=100,
        max_cells=100 * 360,
        val_every_cells=500,
        patience=3,
    )
    result = _fit(pbmc_small, **settings)
    run = _run(pbmc_small, **settings)
    warmup_end = train_mod.budget_summary(run)["warmup_end_step"]
    assert warmup_end == run.clock.steps_to(3000) == 50
    history = result.history
    last = history.iloc[-1]
    assert result.summary["stopped_early"]
    # It stopped at a validation, after the warm-up and before either cap.
    assert last["step"] == result.summary["steps"] > warmup_end
    assert last["cells_seen"] < settings["max_cells"] and last["epoch"] < 100
    # The last `patience` validations did not beat the best one after the warm-up.
    after = history[history["step"] >= warmup_end]
    assert after["val_elbo"].iloc[-3:].max() <= after["val_elbo"].iloc[:-3].max()


def test_budget_summary_places_the_stop_relative_to_the_warmup(pbmc_small):
    run = _run(pbmc_small, kl_schedule="linear", warmup_fraction=0.5, max_epochs=10)
    assert run.schedule.warmup_steps == 30
    run.state.step, run.state.cells_seen, run.state.stop_reason = 42, 42 * 60, "early_stopping"
    budget = train_mod.budget_summary(run)
    assert budget == {
        "steps": 42,
        "cells_seen": 2520,
        "epochs_seen": 7.0,
        "warmup_end_step": 30,
        "warmup_end_cells": 1800,
        "stopped_after_warmup_cells": 720,
        "stopped_after_warmup_epochs": 2.0,
        "stop_reason": "early_stopping",
        "stopped_early": True,
    }
    run.state.stop_reason = "max_cells"
    assert not train_mod.budget_summary(run)["stopped_early"]
    constant = _run(pbmc_small, max_epochs=10)
    assert train_mod.budget_summary(constant)["warmup_end_cells"] == 0


# --------------------------------------------------------------- resuming


def test_a_resumed_run_continues_the_budget_exactly(pbmc_small, tmp_path, monkeypatch, caplog):
    settings = dict(
        max_epochs=6,
        checkpoint_every=1,
        kl_schedule="linear",
        warmup_cells=800,
        warmup_fraction=0.5,
        max_cells=1900,
        val_every_cells=250,
        val_max_cells=30,
        patience=50,
    )
    reference = _fit(pbmc_small, **settings)

    real_evaluate = train_mod._evaluate
    calls = {"n": 0}

    def dies_at_the_sixth_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # in epoch 5, after the checkpoint of epoch 4
            raise KeyboardInterrupt  # as a kill would, mid-run
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_evaluate", dies_at_the_sixth_validation)
    with pytest.raises(KeyboardInterrupt):
        _fit(pbmc_small, checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(train_mod, "_evaluate", real_evaluate)

    with caplog.at_level("INFO", logger="scvae.training.checkpoint"):
        resumed = _fit(pbmc_small, checkpoint_dir=tmp_path, **settings)
    assert "resuming from" in caplog.text and "after epoch 4" in caplog.text
    columns = [c for c in reference.history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
    assert resumed.history.iloc[-1]["cells_seen"] == 1928  # the cap, mid-epoch 6
    for key, value in reference.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key


def test_a_checkpoint_from_before_cells_were_counted_resumes_with_its_cells(
    pbmc_small, tmp_path, monkeypatch
):
    settings = dict(max_epochs=4, checkpoint_every=1)
    reference = _fit(pbmc_small, **settings)
    real_evaluate = train_mod._evaluate
    calls = {"n": 0}

    def dies_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_evaluate", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        _fit(pbmc_small, checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(train_mod, "_evaluate", real_evaluate)
    # Rewrite the checkpoint of epoch 2 as an older scvae wrote it: no cells counted.
    path = tmp_path / CHECKPOINT_NAME
    metadata, tensors = load_tensor_file(path, CHECKPOINT_KIND)
    state = metadata["state"]
    for key in ("cells_seen", "stop_reason", "row_sums", "row_cells"):
        del state[key]
    for row in state["history"]:
        del row["cells_seen"]
    save_tensor_file(path, CHECKPOINT_KIND, tensors, metadata)

    resumed = _fit(pbmc_small, checkpoint_dir=tmp_path, **settings)
    assert list(resumed.history["cells_seen"]) == [360, 720, 1080, 1440]
    columns = [c for c in reference.history.columns if c not in ("seconds", "cells_seen")]
    pd.testing.assert_frame_equal(resumed.history[columns], reference.history[columns])
