"""Training, encoding, diagnostics and the workflow stages on counts that stay on disk."""

from __future__ import annotations

from collections import OrderedDict

import anndata
import numpy as np
import pandas as pd
import pyro
import pytest
from scipy import sparse

import scvae
from scvae.data.ondisk import H5CSR, take_rows
from scvae.diagnostics.suite import diagnose

FAST = {"n_latent": 3, "n_hidden": 16, "batch_size": 32, "threads": 1}


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# ------------------------------------------------------------------ counts on disk


def test_training_latent_and_diagnostics_from_a_backed_file(h5_counts):
    path, a = h5_counts
    backed = anndata.read_h5ad(path, backed="r")
    backed.layers["counts"] = anndata.io.sparse_dataset(backed.file._file["layers/counts"])
    model = scvae.train(backed, max_epochs=2, progress=False, **FAST)
    assert model.summary["epochs"] == 2 and np.isfinite(model.history["val_elbo"]).all()
    # Encoding and diagnostics read the same numbers from disk as from memory.
    assert np.array_equal(model.get_latent(backed), model.get_latent(a))
    opts = dict(k_iwae=4, n_mi=200, n_jacobian=20)
    d_disk, d_mem = diagnose(model, backed, **opts), diagnose(model, a, **opts)
    assert d_disk["iwae_ll_per_cell"] == d_mem["iwae_ll_per_cell"]
    assert d_disk["mi"] == d_mem["mi"] and d_disk["verdict"] == d_mem["verdict"]
    assert (take_rows(H5CSR.open(path), np.array([4, 2]))[np.array([1])] != a.X[[2]]).nnz == 0


def test_workflow_stages_keep_large_files_on_disk(h5_counts, tmp_path, monkeypatch):
    from scvae.data.h5ad import read_h5ad
    from scvae.data.runfiles import read_run, write_run
    from scvae.stages.diagnose import run_diagnose
    from scvae.stages.train import run_train

    path, a = h5_counts
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")  # every file counts as large
    backed = read_h5ad(path, backed=None)
    assert backed.isbacked and not sparse.issparse(backed.layers["counts"])
    settings = {**FAST, "max_epochs": 1}
    run_train(path, tmp_path / "m.pt", tmp_path / "h.tsv", tmp_path / "l.h5ad", settings=settings)
    d = run_diagnose(
        tmp_path / "m.pt", tmp_path / "l.h5ad", tmp_path / "d.json", k_iwae=4, n_mi=100
    )
    assert d["verdict"] in ("healthy", "partial collapse", "collapsed")
    # The run file holds the embedding; read_run attaches the counts, left on disk.
    latent = read_run(tmp_path / "l.h5ad")
    assert latent.isbacked and latent.obsm["X_scvae"].shape == (a.n_obs, 3)
    assert not sparse.issparse(latent.layers["counts"])
    # What the cluster stage adds (run_cluster on a backed file passes too, but its kNN
    # graph compiles numba code for ~30 s).
    latent.obsp["connectivities"] = sparse.identity(a.n_obs, format="csr")
    latent.obs["scvae_leiden"] = pd.Categorical(["0"] * a.n_obs)
    latent.uns["neighbors"] = OrderedDict(params={"n_neighbors": 15})
    write_run(latent, tmp_path / "f.h5ad", extends=tmp_path / "l.h5ad", obsp=["connectivities"])
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "inf")
    final = read_run(tmp_path / "f.h5ad")
    assert (final.layers["counts"] != a.layers["counts"]).nnz == 0 and (final.X != a.X).nnz == 0
    assert "scvae_leiden" in final.obs and "train" in final.uns["scvae"]
    assert final.obsp["connectivities"].nnz == a.n_obs and final.uns["neighbors"]["params"]
    np.testing.assert_array_equal(final.obsm["X_scvae"], latent.obsm["X_scvae"])
