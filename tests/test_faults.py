"""Faults: a training job killed mid-run, outputs that cannot be written, the CLI's messages."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import pandas as pd
import pytest
import torch

from scvae.cli import main
from scvae.utils.torchfile import load_tensor_file

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("model.pt", "history.tsv", "latent.h5ad")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (status {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def _train_args(pre: Path, out: Path, ckpt: Path, log: Path, settings: dict) -> list[str]:
    return [
        "--log", str(log), "train", "--input", str(pre),
        "--model", str(out / "model.pt"), "--history", str(out / "history.tsv"),
        "--latent", str(out / "latent.h5ad"), "--checkpoint-dir", str(ckpt),
        "--settings", json.dumps(settings), "--threads", "1",
    ]  # fmt: skip


# ------------------------------------------------------------------ kill -9 of training


def _start_and_signal(args: list[str], checkpoint: Path, sig: int, stderr: Path) -> int:
    """Start the CLI, send ``sig`` once ``checkpoint`` exists; return the exit status."""
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scvae.cli", *args], stdout=subprocess.DEVNULL, stderr=err
        )
        _wait_for(checkpoint, proc)
        os.kill(proc.pid, sig)
        return proc.wait(timeout=120)


def test_training_stopped_by_sigterm_or_sigkill_resumes_and_touches_nothing_else(
    pbmc300_h5ad, tmp_path
):
    out, ckpt = tmp_path / "run", tmp_path / "checkpoints"
    checkpoint = ckpt / "checkpoint.pt"
    settings = {
        "n_latent": 4, "n_hidden": 32, "batch_size": 32, "max_epochs": 12,
        "checkpoint_every": 1, "early_stopping": False, "device": "cpu",
    }  # fmt: skip
    input_stat = pbmc300_h5ad.stat()
    command = [sys.executable, "-m", "scvae.cli"]

    # SIGTERM first, as a scheduler sends at a time limit: a clean stop, named in the log.
    args = _train_args(pbmc300_h5ad, out, ckpt, tmp_path / "term.log", settings)
    assert _start_and_signal(args, checkpoint, signal.SIGTERM, tmp_path / "term.err") == 143
    assert "stopped by SIGTERM" in (tmp_path / "term.log").read_text()
    assert not out.exists() or list(out.iterdir()) == []
    assert [p.name for p in ckpt.iterdir()] == ["checkpoint.pt"]  # no temporary file

    # Then SIGKILL, which nothing can catch.
    checkpoint.unlink()
    args = _train_args(pbmc300_h5ad, out, ckpt, tmp_path / "kill.log", settings)
    assert _start_and_signal(args, checkpoint, signal.SIGKILL, tmp_path / "kill.err") == -9

    # Nothing under a final name; a temporary file cut short would be hidden (".name.*.tmp").
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not set(left) & set(OUTPUTS)
    assert all(name.startswith(".") and ".tmp" in name for name in left), left
    killed_at = load_tensor_file(checkpoint, "checkpoint")[0]["state"]["epoch"]
    assert 1 <= killed_at < settings["max_epochs"], "training ended before the kill"

    log = tmp_path / "second.log"
    rerun = subprocess.run(
        command + _train_args(pbmc300_h5ad, out, ckpt, log, settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {checkpoint} after epoch" in log.read_text()
    history = pd.read_csv(out / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, settings["max_epochs"] + 1))
    assert history["step"].is_monotonic_increasing
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary file left
    latent = anndata.read_h5ad(out / "latent.h5ad")
    assert latent.obsm["X_scvae"].shape == (latent.n_obs, 4)
    assert latent.uns["scvae"]["train"]["summary"]["epochs"] == settings["max_epochs"]
    # The input was only read.
    assert pbmc300_h5ad.stat().st_mtime_ns == input_stat.st_mtime_ns


# ------------------------------------------------------- outputs that cannot be written


def _preprocess_args(tmp_path: Path, output: Path) -> list[str]:
    return [
        "preprocess", "--input", str(ROOT / ".test" / "data" / "pbmc300.h5"),
        "--output", str(output), "--qc-plot", str(tmp_path / "qc.png"),
    ]  # fmt: skip


def _error_line(err: str, command: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"scvae {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_output_folder_blocked_by_a_file_is_a_one_line_error(tmp_path, capsys):
    # Tests run as root, where a read-only folder does not stop writes; a regular file
    # where the output folder should be does.
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    output = blocker / "pbmc300" / "preprocessed.h5ad"
    assert main(_preprocess_args(tmp_path, output)) == 1
    line = _error_line(capsys.readouterr().err, "preprocess")
    assert line.startswith(f"scvae preprocess: error: {output}: could not write the output: ")
    assert "a file is in the way" in line
    assert blocker.read_text() == "not a folder"


def _disk_full(handle_or_path) -> None:
    """Write a little, then fail as a full disk does."""
    if hasattr(handle_or_path, "write"):
        handle_or_path.write(b"partial")
    else:
        Path(handle_or_path).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_the_h5ad(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(anndata.AnnData, "write_h5ad", lambda self, path, **kw: _disk_full(path))
    output = tmp_path / "out" / "preprocessed.h5ad"
    assert main(_preprocess_args(tmp_path, output)) == 1
    line = _error_line(capsys.readouterr().err, "preprocess")
    assert line == (
        f"scvae preprocess: error: {output}: could not write the output: No space left on "
        "device; free disk space there or write the results elsewhere, then rerun. Nothing "
        "was written under that name."
    )
    assert list(output.parent.iterdir()) == []  # no partial file, no temporary file


def test_disk_full_while_saving_the_model(pbmc300_h5ad, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **kw: _disk_full(f))
    out = tmp_path / "run"
    settings = {"n_latent": 4, "n_hidden": 32, "max_epochs": 1, "device": "cpu"}
    args = _train_args(pbmc300_h5ad, out, tmp_path / "ckpt", tmp_path / "train.log", settings)
    assert main(args) == 1
    line = _error_line(capsys.readouterr().err, "train")
    # The first write is the checkpoint after epoch 1.
    assert line.startswith(f"scvae train: error: {tmp_path / 'ckpt' / 'checkpoint.pt'}: ")
    assert "No space left on device" in line
    assert list((tmp_path / "ckpt").iterdir()) == []
    assert not out.exists() or list(out.iterdir()) == []


def test_log_file_that_cannot_be_opened(tmp_path, capsys):
    blocker = tmp_path / "logs"
    blocker.write_text("")
    log = blocker / "preprocess.log"
    assert main(["--log", str(log), *_preprocess_args(tmp_path, tmp_path / "o.h5ad")]) == 1
    line = _error_line(capsys.readouterr().err, "preprocess")
    assert line.startswith(f"scvae preprocess: error: {log}: cannot open the log file")
    assert not (tmp_path / "o.h5ad").exists()
