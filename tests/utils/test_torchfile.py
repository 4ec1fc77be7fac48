"""Model and checkpoint files: no code in a file runs when scvae opens it."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from scvae.errors import InputError
from scvae.model import SCVAE
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from scvae.training.settings import TrainConfig
from scvae.utils.torchfile import (
    UnsafeFileError,
    convert_legacy_file,
    load_tensor_file,
    save_tensor_file,
)


class _TouchOnUnpickle:
    """Unpickling this calls ``Path.touch(marker)``: stands for any code in a pickle."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _model() -> SCVAE:
    torch.manual_seed(0)
    module = VAE(VAEConfig(n_input=6, n_latent=2, n_hidden=8)).eval()
    return SCVAE.from_module(
        module, TrainConfig(), [f"g{j}" for j in range(6)], summary={"x": np.nan}
    )


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    # The old model layout with a payload that would create the marker when unpickled.
    torch.save({"model_config": _TouchOnUnpickle(marker), "state_dict": {}}, evil)
    # The crafted file really runs code under a full unpickle (the threat is real).
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeFileError, match="refused to load.*would call.*convert-model"):
        SCVAE.load(evil)
    assert not marker.exists()
    with pytest.raises(InputError, match="refused to load.*delete"):
        vae = VAE(VAEConfig(n_input=6, n_latent=2, n_hidden=8))
        load_checkpoint(evil, vae, torch.optim.Adam(vae.parameters()), "hash", torch.device("cpu"))
    assert not marker.exists()


def test_model_round_trip_loads_with_weights_only(tmp_path):
    model = _model()
    model.save(tmp_path / "m.pt")
    # Readable by plain torch with weights_only=True: tensors and plain values only.
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["scvae_format"] == "model" and isinstance(raw["metadata"], str)
    back = SCVAE.load(tmp_path / "m.pt")
    assert back.var_names == model.var_names and np.isnan(back.summary["x"])
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k]), k


def test_checkpoint_round_trip_keeps_optimizer_rng_and_state(tmp_path):
    vae = VAE(VAEConfig(n_input=6, n_latent=2, n_hidden=8))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    vae.inference(torch.ones(4, 6))["qz"].loc.sum().backward()
    opt.step()
    state = TrainState(epoch=3, step=7, history=[{"epoch": 1, "val_elbo": float("nan")}])
    save_checkpoint(tmp_path / "c.pt", vae, opt, state, "h")
    torch.load(tmp_path / "c.pt", weights_only=True)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)
    vae2 = VAE(VAEConfig(n_input=6, n_latent=2, n_hidden=8))
    opt2 = torch.optim.Adam(vae2.parameters(), lr=1e-2)
    back = load_checkpoint(tmp_path / "c.pt", vae2, opt2, "h", torch.device("cpu"))
    assert back.epoch == 3 and back.best_val == -np.inf and np.isnan(back.history[0]["val_elbo"])
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert opt2.state_dict()["state"][1]["exp_avg"].equal(opt.state_dict()["state"][1]["exp_avg"])


def test_old_format_model_gets_a_message_and_an_explicit_converter(tmp_path):
    model = _model()
    old = tmp_path / "old.pt"
    # The layout of scvae before format 2, with a numpy value as old files had.
    torch.save(
        {
            "model_config": model.module.config.to_dict(),
            "train_config": model.train_config.to_dict(),
            "state_dict": model.module.state_dict(),
            "var_names": model.var_names,
            "history": {"epoch": [np.int64(1)]},
            "summary": {},
            "split": [],
        },
        old,
    )
    with pytest.raises(InputError, match="convert-model"):
        SCVAE.load(old)
    with pytest.raises(InputError, match="i_trust_this_file"):
        SCVAE.convert(old, tmp_path / "new.pt")
    assert not (tmp_path / "new.pt").exists()
    SCVAE.convert(old, tmp_path / "new.pt", i_trust_this_file=True)
    back = SCVAE.load(tmp_path / "new.pt")
    assert back.var_names == model.var_names


def test_wrong_kind_missing_file_and_trust_flag(tmp_path):
    save_tensor_file(tmp_path / "c.pt", "checkpoint", {}, {"a": 1})
    with pytest.raises(InputError, match="a checkpoint file, not a model file"):
        load_tensor_file(tmp_path / "c.pt", "model")
    with pytest.raises(InputError, match="does not exist"):
        SCVAE.load(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable"):
        SCVAE.load(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="trust"):
        convert_legacy_file(tmp_path / "c.pt", tmp_path / "x.pt")


def test_convert_model_command_needs_the_trust_flag(tmp_path):
    from scvae.cli import main

    model = _model()
    old = tmp_path / "old.pt"
    payload = {
        "model_config": model.module.config.to_dict(),
        "train_config": model.train_config.to_dict(),
        "state_dict": model.module.state_dict(),
        "var_names": model.var_names,
        "history": {},
        "summary": {},
    }
    torch.save(payload, old)
    assert main(["convert-model", str(old), str(tmp_path / "new.pt")]) == 1
    assert not (tmp_path / "new.pt").exists()
    args = ["convert-model", str(old), str(tmp_path / "new.pt"), "--i-trust-this-file"]
    assert main(args) == 0
    assert SCVAE.load(tmp_path / "new.pt").var_names == model.var_names
