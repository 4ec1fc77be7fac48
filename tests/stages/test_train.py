"""The training stage: the batch and covariates come from the preprocessing record."""

from __future__ import annotations

import numpy as np

from scvae.data.h5ad import write_h5ad
from scvae.data.runfiles import read_run
from scvae.model import SCVAE
from scvae.stages.train import run_train

FAST = {"n_latent": 3, "n_hidden": 16, "batch_size": 64, "threads": 1, "max_epochs": 1}


def _stage(adata, tmp_path):
    src = tmp_path / "preprocessed.h5ad"
    write_h5ad(adata, src)
    out = [tmp_path / name for name in ("model.pt", "history.tsv", "latent.h5ad")]
    model = run_train(src, *out, settings=FAST)
    return model, read_run(out[2]), SCVAE.load(out[0])


def test_run_train_conditions_on_the_recorded_batch_and_covariates(two_batches, tmp_path):
    two_batches.uns["scvae"] = {"preprocess": {"batch_key": "batch", "covariate_keys": ["donor"]}}
    model, latent, loaded = _stage(two_batches, tmp_path)
    assert model.module.config.n_categories == (2, 3)
    record = latent.uns["scvae"]["train"]
    assert record["batch_key"] == "batch"
    assert list(record["covariate_keys"]) == ["donor"]
    assert list(record["categories"]["batch"]) == ["a", "b"]
    assert list(record["model"]["n_categories"]) == [2, 3]
    assert loaded.categories == model.categories and loaded.batch_key == "batch"
    np.testing.assert_array_equal(latent.obsm["X_scvae"], loaded.get_latent(latent))


def test_run_train_without_batches_writes_an_unconditional_record(two_batches, tmp_path):
    model, latent, _ = _stage(two_batches, tmp_path)
    assert model.module.config.n_categories == ()
    record = latent.uns["scvae"]["train"]
    assert "batch_key" not in record and len(record["covariate_keys"]) == 0
