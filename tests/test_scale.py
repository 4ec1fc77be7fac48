"""Out-of-core counts, block shuffle, synthetic data and the one-pass ELBO (all fast)."""

from __future__ import annotations

from collections import OrderedDict

import anndata
import h5py
import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from scipy import sparse

import scvae
from scvae.data.loaders import CountBatches
from scvae.data.ondisk import H5CSR, Subset, row_sums, take_rows
from scvae.data.synthetic import synthetic_counts, write_synthetic_h5ad
from scvae.diagnostics.core import diagnose
from scvae.module import VAE, VAEConfig
from scvae.training.objective import FreeBitsELBO

FAST = {"n_latent": 3, "n_hidden": 16, "batch_size": 32, "threads": 1}


@pytest.fixture(autouse=True)
def _clear_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# ------------------------------------------------------------------ one-pass ELBO


VARIANTS = [
    {},
    {"likelihood": "zinb"},
    {"likelihood": "poisson"},
    {"dispersion": "gene-cell"},
    {"theta": 2.0},
    {"library": "latent"},
    {"skip": "ungated"},
    {"skip": "gated", "bn_gamma": 0.5},
    {"encoder_input": "normalized", "decoder_layers": 0},
]


def _terms(module, x, weight, direct):
    elbo = FreeBitsELBO(free_bits=0.3)
    elbo.direct = direct
    torch.manual_seed(3)
    module.zero_grad(set_to_none=True)
    t = elbo.terms(module.model, module.guide, x, weight)
    elbo.loss_from_terms(t).backward()
    grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    return t, grads


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_one_pass_terms_are_bit_identical_to_pyro_trace(cfg, weight):
    torch.manual_seed(0)
    module = VAE(VAEConfig(n_input=30, n_latent=4, n_hidden=8, **cfg), library_log_mean=4.0)
    x = torch.poisson(torch.full((12, 30), 2.0))
    fast, g_fast = _terms(module, x, weight, direct=True)
    ref, g_ref = _terms(module, x, weight, direct=False)
    assert FreeBitsELBO()._direct_module(module.model, module.guide) is module
    for name in ("recon", "kl_per_dim", "kl_other"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    assert fast.kl_weight == ref.kl_weight
    assert g_fast.keys() == g_ref.keys()
    for k in g_ref:
        assert torch.equal(g_fast[k], g_ref[k]), k


def test_handlers_and_other_programs_go_through_pyro():
    module = VAE(VAEConfig(n_input=5, n_latent=2, n_hidden=4))
    elbo = FreeBitsELBO()
    with pyro.poutine.block():
        assert elbo._direct_module(module.model, module.guide) is None
    assert elbo._direct_module(lambda x: None, module.guide) is None
    assert FreeBitsELBO(latent_site="w")._direct_module(module.model, module.guide) is None


def test_training_is_bit_identical_to_the_traced_for_loop_reference(monkeypatch):
    adata = synthetic_counts(120, 40, seed=1)
    adata.layers["counts"] = adata.X.copy()
    settings = dict(max_epochs=2, kl_schedule="linear", warmup_fraction=0.5, free_bits=0.2, **FAST)
    fast = scvae.train(adata, progress=False, **settings)
    # The reference: Pyro's trace and torch's default (for-loop) Adam on CPU.
    monkeypatch.setattr(FreeBitsELBO, "direct", False)
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: adam(*a, **{**k, "foreach": False}))
    ref = scvae.train(adata, progress=False, **settings)
    cols = ["train_loss", "train_elbo", "val_elbo", "theta_median"]
    assert fast.history[cols].equals(ref.history[cols])
    for k, v in ref.module.state_dict().items():
        assert torch.equal(fast.module.state_dict()[k], v), k


# ------------------------------------------------------------------ synthetic data


def test_synthetic_file_shape_counts_labels_and_seed(tmp_path):
    path = write_synthetic_h5ad(tmp_path / "s.h5ad", 5000, 60, seed=7)
    a = anndata.read_h5ad(path)
    assert a.shape == (5000, 60)
    assert sparse.issparse(a.X) and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() > 0
    assert a.obs["label"].nunique() == 10
    assert a.X.indptr.dtype == a.X.indices.dtype
    # Same seed, same file; the in-memory generator draws the same counts.
    again = synthetic_counts(5000, 60, seed=7)
    assert (again.X != a.X).nnz == 0
    assert (again.obs["label"].to_numpy() == a.obs["label"].to_numpy()).all()
    assert (synthetic_counts(5000, 60, seed=8).X != a.X).nnz > 0
    # The first cells of a larger file are a smaller file.
    assert (synthetic_counts(100, 60, seed=7).X != a.X[:100]).nnz == 0
    backed = anndata.read_h5ad(path, backed="r")
    rows = np.array([0, 17, 4999])
    assert (backed.X[rows] != a.X[rows]).nnz == 0


def test_synthetic_clusters_are_recoverable():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    from scvae.data.synthetic import SyntheticParams

    a = synthetic_counts(1500, 300, seed=0, params=SyntheticParams(n_clusters=5, de_fraction=0.3))
    X = a.X.toarray()
    X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    pcs = PCA(10, random_state=0).fit_transform(X)
    pred = KMeans(5, n_init=4, random_state=0).fit_predict(pcs)
    assert adjusted_rand_score(a.obs["label"], pred) > 0.8


# ------------------------------------------------------------------ on-disk CSR


@pytest.fixture
def h5_counts(tmp_path):
    a = synthetic_counts(700, 25, seed=2)
    a.layers["counts"] = a.X.copy()
    a.write_h5ad(tmp_path / "c.h5ad")
    return tmp_path / "c.h5ad", a


def test_h5csr_rows_match_scipy(h5_counts):
    path, a = h5_counts
    X = H5CSR.open(path, "layers/counts")
    assert X.shape == a.shape and X.nnz == a.X.nnz
    rng = np.random.default_rng(0)
    for rows in (
        np.arange(5),
        np.array([9, 3, 3, 699, 0]),
        np.sort(rng.choice(700, 90, replace=False)),
        rng.choice(700, 300),
        np.array([], dtype=int),
        np.array([-1, 2]),
        slice(100, 180),
        slice(None, None, 9),
    ):
        got, want = X[rows], a.X[rows]
        assert got.shape == want.shape and (got != want).nnz == 0
    assert np.array_equal(row_sums(X), row_sums(a.X))
    sub = Subset(X, np.array([1, 5, 8]), np.array([3, 0]))
    assert (sub[np.array([0, 2])] != a.X[[1, 8]][:, [3, 0]]).nnz == 0
    with pytest.raises(ValueError, match="CSR"):
        H5CSR(h5py.File(path)["obs"])


def test_block_shuffle_covers_every_row_once_and_reads_windows(h5_counts):
    path, a = h5_counts
    X = H5CSR.open(path)
    idx = np.sort(np.random.default_rng(0).choice(700, 600, replace=False))
    loader = CountBatches(X, idx, 50, shuffle=True, seed=1, block_size=40, window_blocks=3)
    batches = loader.batches(0)
    assert np.array_equal(np.sort(np.concatenate(batches)), idx)
    assert not np.array_equal(np.concatenate(batches), idx)
    assert [b.tolist() for b in batches] != [b.tolist() for b in loader.batches(1)]
    dense = list(loader.epoch(0))
    mem = CountBatches(a.X, idx, 50, shuffle=True, seed=1, block_size=40, window_blocks=3)
    for got, want in zip(dense, mem.epoch(0), strict=True):
        assert torch.equal(got, want)
    # Without block_size the order is the in-memory loader's, as before.
    plain = CountBatches(X, idx, 50, shuffle=True, seed=1)
    assert [b.tolist() for b in plain.batches(0)] == [
        b.tolist() for b in CountBatches(a.X, idx, 50, shuffle=True, seed=1).batches(0)
    ]


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
    from scvae.data.readers import read_h5ad, write_h5ad
    from scvae.diagnostics.core import run_diagnose
    from scvae.training.loop import run_train

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
    latent = read_h5ad(tmp_path / "l.h5ad", backed=None)
    assert latent.isbacked and latent.obsm["X_scvae"].shape == (a.n_obs, 3)
    # What the cluster stage adds (run_cluster on a backed file passes too, but its kNN
    # graph compiles numba code for ~30 s).
    latent.obsp["connectivities"] = sparse.identity(a.n_obs, format="csr")
    latent.obs["scvae_leiden"] = pd.Categorical(["0"] * a.n_obs)
    latent.uns["neighbors"] = OrderedDict(params={"n_neighbors": 15})
    write_h5ad(latent, tmp_path / "f.h5ad")
    final = anndata.read_h5ad(tmp_path / "f.h5ad")
    assert (final.layers["counts"] != a.layers["counts"]).nnz == 0 and (final.X != a.X).nnz == 0
    assert "scvae_leiden" in final.obs and "train" in final.uns["scvae"]
    assert final.obsp["connectivities"].nnz == a.n_obs and final.uns["neighbors"]["params"]


# ------------------------------------------------------------------ out-of-core preprocessing


def _messy_h5ad(path):
    """Synthetic counts with empty cells and genes, MT- genes, a duplicate name, an obsm."""
    a = synthetic_counts(900, 300, seed=3)
    X = a.X.tolil()
    X[5, :] = 0
    X[:, 10] = 0
    a.X = X.tocsr()
    a.var_names = [f"MT-{i}" if i < 4 else f"g{i}" for i in range(299)] + ["g5"]
    a.obs["cell_type"] = a.obs.pop("label").astype(str)
    a.obsm["X_emb"] = np.arange(1800, dtype=float).reshape(900, 2)
    a.write_h5ad(path)


@pytest.mark.parametrize(
    "settings",
    [
        {"min_genes": 20, "min_cells": 5, "max_mito_fraction": 0.05, "n_top_genes": 100},
        {"n_top_genes": None},
    ],
)
def test_streamed_preprocessing_equals_the_in_memory_path(tmp_path, monkeypatch, settings):
    from scvae.preprocess.memory import run_preprocess

    _messy_h5ad(tmp_path / "in.h5ad")
    with pytest.warns(UserWarning, match="duplicate gene"):
        run_preprocess(
            tmp_path / "in.h5ad",
            tmp_path / "m.h5ad",
            tmp_path / "m.png",
            label_key="cell_type",
            **settings,
        )
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")  # the same call streams
    with pytest.warns(UserWarning, match="duplicate gene"):
        run_preprocess(
            tmp_path / "in.h5ad",
            tmp_path / "d.h5ad",
            tmp_path / "d.png",
            label_key="cell_type",
            **settings,
        )
    mem, disk = anndata.read_h5ad(tmp_path / "m.h5ad"), anndata.read_h5ad(tmp_path / "d.h5ad")
    assert (tmp_path / "d.png").stat().st_size > 0
    assert mem.shape == disk.shape and (mem.X != disk.X).nnz == 0
    assert (mem.layers["counts"] != disk.layers["counts"]).nnz == 0
    with h5py.File(tmp_path / "d.h5ad") as f:  # the counts are on disk once
        assert f["X"] == f["layers/counts"]
    pd.testing.assert_frame_equal(mem.obs, disk.obs)
    pd.testing.assert_frame_equal(mem.var, disk.var, check_exact=False, rtol=1e-9)
    assert mem.uns["scvae"]["preprocess"] == disk.uns["scvae"]["preprocess"]
    assert mem.uns.get("hvg") == disk.uns.get("hvg")
    assert np.array_equal(mem.obsm["X_emb"], disk.obsm["X_emb"])


@pytest.mark.filterwarnings("ignore:.*duplicate gene")
def test_streamed_preprocessing_errors_like_the_in_memory_path(tmp_path):
    from scvae.errors import InputError
    from scvae.preprocess.streamed import preprocess_h5ad_backed

    _messy_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(InputError, match="no cells left after step 2_filter_cells"):
        preprocess_h5ad_backed(tmp_path / "in.h5ad", tmp_path / "o.h5ad", min_genes=10_000)
    with pytest.raises(InputError, match="has no layer 'raw'"):
        preprocess_h5ad_backed(tmp_path / "in.h5ad", tmp_path / "o.h5ad", layer="raw")
    assert not (tmp_path / "o.h5ad").exists()
