"""Run files hold what a run adds; read_run opens them with everything attached."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyro
import pytest
from scipy import sparse

import scvae.data.runfiles
import scvae.stages.cluster
import scvae.stages.train
from scvae.baseline import pca_embedding
from scvae.data.h5ad import read_h5ad, write_h5ad
from scvae.data.runfiles import EXTENDS_KEY, read_run, write_run
from scvae.data.synthetic import synthetic_counts
from scvae.decode import DECODED_LAYER
from scvae.errors import InputError
from scvae.stages.baseline import run_baseline
from scvae.stages.cluster import run_cluster
from scvae.stages.train import run_train

FAST = {"n_latent": 3, "n_hidden": 16, "batch_size": 64, "threads": 1, "max_epochs": 2}


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def preprocessed(tmp_path):
    """A preprocessed-like file (counts in X and layers["counts"], labels, a uns record)."""
    a = synthetic_counts(400, 30, seed=3)
    a.layers["counts"] = a.X.copy()
    a.obs["n_counts"] = np.asarray(a.X.sum(1)).ravel()
    a.uns["scvae"] = {"preprocess": {"min_genes": 1}}
    path = tmp_path / "results" / "data" / "preprocessed.h5ad"
    write_h5ad(a, path)
    return path, a


def _assert_same(got: anndata.AnnData, want: anndata.AnnData) -> None:
    """Every element of two AnnData objects equal (uns by its keys, recursively)."""
    assert got.shape == want.shape
    assert list(got.obs_names) == list(want.obs_names)
    assert list(got.var_names) == list(want.var_names)
    pd.testing.assert_frame_equal(got.obs, want.obs)
    pd.testing.assert_frame_equal(got.var, want.var)
    assert (sparse.csr_matrix(got.X) != sparse.csr_matrix(want.X)).nnz == 0
    for m in ("obsm", "varm", "obsp", "layers"):
        a, b = getattr(got, m), getattr(want, m)
        assert sorted(a) == sorted(b), m
        for key in b:
            x, y = a[key], b[key]
            if sparse.issparse(y):
                assert (sparse.csr_matrix(x) != y).nnz == 0, (m, key)
            else:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{m} {key}")
    _assert_same_tree(got.uns, want.uns, "uns")


def _assert_same_tree(a, b, where: str) -> None:
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), where
        for k in b:
            _assert_same_tree(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(b, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


def _full_files(monkeypatch, folder):
    """Also write, next to each run file, what the stage held (what a full file held)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = scvae.data.runfiles.write_run

    def spy(adata, path, **kwargs):
        real(adata, path, **kwargs)
        # The stage's AnnData as the old full file held it: no extends key.
        full = adata.copy() if not adata.isbacked else adata.to_memory()
        full.uns["scvae"] = {k: v for k, v in full.uns["scvae"].items() if k != EXTENDS_KEY}
        full.write_h5ad(folder / Path(path).name)

    # Where the stages that write run files took the name from scvae.data.runfiles.
    monkeypatch.setattr(scvae.stages.train, "write_run", spy)
    monkeypatch.setattr(scvae.stages.cluster, "write_run", spy)


def test_a_run_opened_with_its_counts_equals_the_full_files(preprocessed, tmp_path, monkeypatch):
    path, a = preprocessed
    run = path.parent / "vae" / "seed0"
    full = tmp_path / "full"
    _full_files(monkeypatch, full)
    run_train(path, run / "model.pt", run / "history.tsv", run / "latent.h5ad", settings=FAST)
    run_cluster(
        run / "latent.h5ad",
        run / "final.h5ad",
        run / "metrics.json",
        resolutions=[1.0, 0.5],
        model_path=run / "model.pt",
    )
    for name in ("latent.h5ad", "final.h5ad"):
        slim = anndata.read_h5ad(run / name)
        assert slim.X is None and "counts" not in slim.layers  # the counts are not copied
        assert (
            slim.uns["scvae"][EXTENDS_KEY]
            == {
                "latent.h5ad": "../../preprocessed.h5ad",
                "final.h5ad": "latent.h5ad",
            }[name]
        )
        _assert_same(read_run(run / name), anndata.read_h5ad(full / name))
    final = anndata.read_h5ad(run / "final.h5ad")
    # What a user looks at is in the file itself.
    assert {"label", "scvae_leiden", "scvae_split"} <= set(final.obs.columns)
    assert {"X_umap"} == set(final.obsm) and {"distances", "connectivities"} == set(final.obsp)
    assert "metrics" in final.uns["scvae"]["cluster"]
    assert not final.layers and DECODED_LAYER not in read_run(run / "final.h5ad").layers
    # latent.h5ad holds the embedding, final.h5ad does not copy it.
    assert set(anndata.read_h5ad(run / "latent.h5ad").obsm) == {"X_scvae", "X_scvae_scale"}


def test_run_files_move_with_their_folder_and_export_is_self_contained(preprocessed, tmp_path):
    path, a = preprocessed
    base = path.parent / "pca5" / "seed0" / "latent.h5ad"
    run_baseline(path, base, method="pca", n_components=5)
    moved = tmp_path / "elsewhere"
    shutil.copytree(path.parent, moved)
    shutil.rmtree(path.parent)
    opened = read_run(moved / "pca5" / "seed0" / "latent.h5ad")
    assert (opened.layers["counts"] != a.layers["counts"]).nnz == 0
    assert opened.obsm["X_scvae"].shape == (a.n_obs, 5) and EXTENDS_KEY not in opened.uns["scvae"]
    out = tmp_path / "export.h5ad"
    cmd = [
        sys.executable,
        "-m",
        "scvae.cli",
        "export",
        "--input",
        str(moved / "pca5" / "seed0" / "latent.h5ad"),
    ]
    subprocess.run([*cmd, "--output", str(out)], check=True, capture_output=True)
    _assert_same(anndata.read_h5ad(out), opened)


def test_read_run_refuses_a_preprocessed_file_rewritten_after_the_run(preprocessed):
    path, a = preprocessed
    run = path.parent / "pca5" / "seed0" / "latent.h5ad"
    run_baseline(path, run, method="pca", n_components=5)
    write_h5ad(a[10:].copy(), path)
    with pytest.raises(InputError, match="rewritten after this run"):
        read_run(run)
    path.unlink()
    with pytest.raises(InputError, match="preprocessed.h5ad"):
        read_run(run)


def test_write_run_refuses_other_cells(preprocessed, tmp_path):
    path, a = preprocessed
    with pytest.raises(InputError, match="cannot extend"):
        write_run(a[:5].copy(), tmp_path / "x.h5ad", extends=path)


def test_pca_on_disk_equals_scanpys_pca_in_memory(preprocessed, monkeypatch):
    path, a = preprocessed
    in_memory = pca_embedding(a, n_components=5)
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")
    backed = read_h5ad(path, backed=None)
    assert backed.isbacked
    # Two chunks at least, so that the passes really accumulate.
    monkeypatch.setattr("scvae.data.ondisk.CHUNK_NNZ", a.layers["counts"].nnz // 3)
    on_disk = pca_embedding(backed, n_components=5)
    np.testing.assert_allclose(np.abs(on_disk), np.abs(in_memory), rtol=1e-3, atol=1e-3)


def test_cluster_subsamples_the_umap_and_leaves_out_a_large_graph(preprocessed, tmp_path):
    path, a = preprocessed
    latent = path.parent / "pca5" / "seed0" / "latent.h5ad"
    run_baseline(path, latent, method="pca", n_components=5)
    final = latent.parent / "final.h5ad"
    record = run_cluster(
        latent, final, latent.parent / "metrics.json", umap_max_cells=100, graph_max_cells=399
    )
    assert record["cluster"]["umap_cells"] == 100
    written = anndata.read_h5ad(final)
    assert np.isfinite(written.obsm["X_umap"]).all(axis=1).sum() == 100
    assert not written.obsp and "neighbors" not in written.uns
    assert "sc.pp.neighbors" in written.uns["scvae"]["cluster"]["graph"]
    # Every cell is clustered and scored.
    assert written.obs["scvae_leiden"].notna().all() and np.isfinite(
        record["metrics"]["kmeans_ari"]
    )
