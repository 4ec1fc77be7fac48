"""Same seed, settings and threads on CPU: bit-identical results; other seeds: a spread."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from scvae import compare
from scvae.stages.diagnose import run_diagnose
from scvae.stages.train import run_train
from scvae.utils.torchfile import load_tensor_file

SETTINGS = {
    "n_latent": 4,
    "n_hidden": 32,
    "batch_size": 64,
    "max_epochs": 3,
    "kl_schedule": "linear",
    "warmup_fraction": 0.5,
    "free_bits": 0.2,
    "device": "cpu",
    "threads": 1,
}
DIAGNOSTICS = {"k_iwae": 10, "n_mi": 300, "n_jacobian": 50}
# Wall-clock fields: everything else must be identical.
TIMING_COLUMNS = {"seconds"}
TIMING_SUMMARY_KEYS = {"train_seconds"}


def _run(pre: Path, out: Path, seed: int) -> Path:
    pyro.clear_param_store()
    run_train(
        pre,
        out / "model.pt",
        out / "history.tsv",
        out / "latent.h5ad",
        checkpoint_dir=out / "checkpoints",
        settings={**SETTINGS, "seed": seed},
    )
    run_diagnose(out / "model.pt", out / "latent.h5ad", out / "diagnostics.json", **DIAGNOSTICS)
    return out


@pytest.fixture(scope="module")
def runs(pbmc300_h5ad, tmp_path_factory) -> dict[str, Path]:
    """Seed 0 twice (in different folders) and seed 1 once."""
    root = tmp_path_factory.mktemp("repro")
    return {
        name: _run(pbmc300_h5ad, root / name, seed) for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    }


def _latent(run: Path) -> anndata.AnnData:
    return anndata.read_h5ad(run / "latent.h5ad")


def _diagnostics(run: Path) -> dict:
    return json.loads((run / "diagnostics.json").read_text())


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.tsv", sep="\t")


def test_same_seed_gives_bit_identical_latent_model_and_diagnostics(runs):
    a, b = _latent(runs["a"]), _latent(runs["b"])
    for key in ("X_scvae", "X_scvae_scale"):
        assert a.obsm[key].dtype == b.obsm[key].dtype
        assert np.array_equal(a.obsm[key], b.obsm[key]), key  # exact, not allclose
    assert a.obs["scvae_split"].equals(b.obs["scvae_split"])

    state_a = load_tensor_file(runs["a"] / "model.pt", "model")[1]["state_dict"]
    state_b = load_tensor_file(runs["b"] / "model.pt", "model")[1]["state_dict"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    # Diagnostics hold no wall-clock field: the whole JSON must match.
    assert _diagnostics(runs["a"]) == _diagnostics(runs["b"])

    ha, hb = _history(runs["a"]), _history(runs["b"])
    assert TIMING_COLUMNS <= set(ha.columns)
    pd.testing.assert_frame_equal(
        ha.drop(columns=list(TIMING_COLUMNS)),
        hb.drop(columns=list(TIMING_COLUMNS)),
        check_exact=True,
    )
    sa, sb = (x.uns["scvae"]["train"]["summary"] for x in (a, b))
    drop = TIMING_SUMMARY_KEYS
    assert {k: v for k, v in sa.items() if k not in drop} == {
        k: v for k, v in sb.items() if k not in drop
    }


def test_other_seed_varies_and_the_summary_reports_the_spread(runs):
    a, c = _latent(runs["a"]), _latent(runs["c"])
    assert not np.allclose(a.obsm["X_scvae"], c.obsm["X_scvae"])
    assert (a.obs["scvae_split"] != c.obs["scvae_split"]).any()  # the split is seeded too

    records = [
        {
            "dataset": "pbmc300",
            "variant": "v",
            "seed": seed,
            "metrics": {"status": "ok", "metrics": {}, "train": {"n_latent": 4}},
            "diagnostics": runs[name] / "diagnostics.json",
        }
        for name, seed in [("a", 0), ("c", 1)]
    ]
    row = compare.summarize(compare.collect(records)).iloc[0]
    assert row["n_seeds"] == 2
    for metric in ("mi", "kl_total", "iwae_ll_per_cell"):
        values = [_diagnostics(runs[n])[metric] for n in ("a", "c")]
        assert values[0] != values[1]
        assert row[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert row[f"{metric}_sd"] == pytest.approx(np.std(values, ddof=1))
        assert row[f"{metric}_sd"] > 0


def test_versions_and_config_hash_are_recorded(runs):
    a, b, c = (_latent(runs[n]).uns["scvae"]["train"] for n in ("a", "b", "c"))
    for package in ("torch", "pyro-ppl", "scanpy", "anndata"):
        assert a["versions"][package] not in ("", "not installed"), package
    assert a["versions"]["torch"] == torch.__version__
    digest = a["summary"]["config_hash"]
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert b["summary"]["config_hash"] == digest  # same settings and data
    assert c["summary"]["config_hash"] != digest  # the seed is part of the settings
