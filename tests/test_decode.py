"""The decoded expression on demand: scvae.read_run(decoded=True), add_decoded, scvae decode."""

from __future__ import annotations

import shutil
import subprocess
import sys

import anndata
import numpy as np
import pyro
import pytest

import scvae
from scvae.data.h5ad import write_h5ad
from scvae.data.runfiles import read_run as read_run_files
from scvae.data.runfiles import write_run
from scvae.decode import DECODED_LAYER, add_decoded, model_of_run, read_run
from scvae.errors import InputError
from scvae.model import SCVAE
from scvae.stages.train import run_train

BATCHES = ["p1", "p2"]
FAST = {"n_latent": 3, "n_hidden": 16, "batch_size": 64, "threads": 1, "max_epochs": 2}


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def run(small_counts, tmp_path):
    """A VAE run conditioned on the batch, as the workflow leaves it: model.pt, run files."""
    pre = small_counts.copy()
    pre.obs["batch"] = np.where(np.arange(pre.n_obs) % 2, *BATCHES)
    pre.uns["scvae"] = {"preprocess": {"batch_key": "batch"}}
    data = tmp_path / "results" / "data"
    write_h5ad(pre, data / "preprocessed.h5ad")
    folder = data / "vae" / "seed0"
    run_train(
        data / "preprocessed.h5ad",
        folder / "model.pt",
        folder / "history.tsv",
        folder / "latent.h5ad",
        settings=FAST,
    )
    latent = read_run_files(folder / "latent.h5ad")
    latent.obs["scvae_leiden"] = latent.obs["cell_type"].astype(str)
    write_run(latent, folder / "final.h5ad", extends=folder / "latent.h5ad")
    return folder / "final.h5ad", SCVAE.load(folder / "model.pt")


def test_read_run_decodes_with_the_model_next_to_the_file_only_when_asked(run):
    path, model = run
    assert scvae.read_run is read_run  # the public name is the one that can decode
    plain = read_run(path)
    assert DECODED_LAYER not in plain.layers and "decoded" not in plain.uns["scvae"]
    adata = scvae.read_run(path, decoded=True)
    want = model.get_normalized_expression(read_run_files(path))
    np.testing.assert_allclose(adata.layers[DECODED_LAYER], want, rtol=1e-6)
    np.testing.assert_allclose(adata.layers[DECODED_LAYER].sum(1), 1e4, rtol=1e-4)
    assert adata.uns["scvae"]["decoded"] == {
        "layer": DECODED_LAYER,
        "library_size": 1e4,
        "transform_batch": "",
        "model": str(path.parent / "model.pt"),
    }
    # Everything read_run attaches is still there.
    assert "X_scvae" in adata.obsm and "scvae_leiden" in adata.obs


def test_transform_batch_decodes_every_cell_as_if_from_one_batch(run):
    path, model = run
    own = read_run(path, decoded=True).layers[DECODED_LAYER]
    adata = read_run(path, decoded=True, transform_batch="p2", batch_size=7)
    corrected = adata.layers[DECODED_LAYER]
    want = model.get_normalized_expression(read_run_files(path), transform_batch="p2")
    np.testing.assert_allclose(corrected, want, rtol=1e-6)
    from_p2 = (adata.obs["batch"] == "p2").to_numpy()
    np.testing.assert_allclose(corrected[from_p2], own[from_p2], rtol=1e-5)
    assert np.abs(corrected[~from_p2] - own[~from_p2]).max() > 1e-3
    assert adata.uns["scvae"]["decoded"]["transform_batch"] == "p2"
    with pytest.raises(InputError, match="not one of the model's batches"):
        read_run(path, decoded=True, transform_batch="p9")
    with pytest.raises(InputError, match="batch_size=0"):
        read_run(path, decoded=True, batch_size=0)


def test_a_stored_layer_is_read_not_recomputed(run):
    path, model = run
    adata = read_run(path)
    add_decoded(adata, model)
    adata.layers[DECODED_LAYER] *= 2  # a mark: recomputing would undo it
    write_run(adata, path, extends=path.parent / "latent.h5ad", layers=[DECODED_LAYER])
    (path.parent / "model.pt").unlink()
    stored = read_run(path, decoded=True).layers[DECODED_LAYER]
    np.testing.assert_allclose(stored.sum(1), 2e4, rtol=1e-4)
    # Another batch needs the model, which is gone: the error names it.
    with pytest.raises(InputError, match="no model.pt next to it"):
        read_run(path, decoded=True, transform_batch="p1")


def test_a_run_without_a_model_is_an_error_that_says_why(run, tmp_path):
    path, _ = run
    # The results folder copied without the model (as a baseline's folder has none).
    shutil.copytree(path.parent.parent.parent, tmp_path / "copy")
    copy = tmp_path / "copy" / "vae" / "seed0"
    (copy / "model.pt").rename(tmp_path / "elsewhere.pt")
    with pytest.raises(InputError, match="Baselines .* have none"):
        read_run(copy / "final.h5ad", decoded=True)
    with pytest.raises(InputError, match="no model.pt"):
        model_of_run(copy / "final.h5ad")
    # Given where the model is, it decodes.
    adata = read_run(copy / "final.h5ad", decoded=True, model=tmp_path / "elsewhere.pt")
    assert adata.uns["scvae"]["decoded"]["model"] == str(tmp_path / "elsewhere.pt")
    np.testing.assert_allclose(
        adata.layers[DECODED_LAYER], read_run(path, decoded=True).layers[DECODED_LAYER]
    )


def test_scvae_decode_writes_the_export_plus_the_layer(run, tmp_path):
    path, _ = run
    cli = [sys.executable, "-m", "scvae.cli"]
    subprocess.run(
        [*cli, "export", "--input", str(path), "--output", str(tmp_path / "e.h5ad")],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "decoded.h5ad"
    subprocess.run(
        [*cli, "decode", "--input", str(path), "--output", str(out), "--batch-size", "16"],
        check=True,
        capture_output=True,
    )
    exported, decoded = anndata.read_h5ad(tmp_path / "e.h5ad"), anndata.read_h5ad(out)
    assert set(decoded.layers) == set(exported.layers) | {DECODED_LAYER}
    assert (decoded.X != exported.X).nnz == 0
    np.testing.assert_array_equal(decoded.obsm["X_scvae"], exported.obsm["X_scvae"])
    np.testing.assert_allclose(
        decoded.layers[DECODED_LAYER], read_run(path, decoded=True).layers[DECODED_LAYER]
    )
    assert "extends" not in decoded.uns["scvae"]  # self-contained

    bad = subprocess.run(
        [*cli, "decode", "--input", str(path), "--output", str(out), "--batch-size", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--batch-size: 0 must be at least 1" in bad.stderr
    (path.parent / "model.pt").unlink()
    missing = subprocess.run(
        [*cli, "decode", "--input", str(path), "--output", str(tmp_path / "x.h5ad")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "no model.pt next to it" in missing.stderr
    assert not (tmp_path / "x.h5ad").exists()
