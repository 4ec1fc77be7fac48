from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvae import baseline as baselines
from scvae import cluster as tl
from scvae import metrics as M
from scvae.errors import InputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PBMC = DATA / "pbmc4k_top2000.h5"
N_CELLS = 600


@pytest.fixture(scope="module")
def pbmc_counts() -> ad.AnnData:
    """600 random cells of PBMC 4k in the preprocessing stage's layout."""
    if not PBMC.is_file():
        pytest.skip(f"real data not found at {PBMC} (needs the shared data folder)")
    with h5py.File(PBMC) as f:
        n = f["X"].shape[0]
        idx = np.sort(np.random.default_rng(0).choice(n, N_CELLS, replace=False))
        X = f["X"][idx]
        y = f["Y"][idx]
    counts = sp.csr_matrix(X.astype(np.float32))
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(index=[f"cell{i}" for i in idx]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(X.shape[1])]),
    )
    adata.layers["counts"] = counts.copy()
    adata.obs["label"] = pd.Categorical(y.astype(int).astype(str))
    return adata


@pytest.fixture(scope="module")
def pbmc_pca(pbmc_counts: ad.AnnData) -> ad.AnnData:
    adata = pbmc_counts.copy()
    adata.obsm["X_scvae"] = baselines.pca_embedding(adata, n_components=10)
    return adata


def test_pca_embedding_leaves_input_untouched(pbmc_counts):
    before = pbmc_counts.X.copy()
    emb = baselines.pca_embedding(pbmc_counts, n_components=5)
    assert emb.shape == (N_CELLS, 5)
    assert emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert (pbmc_counts.X != before).nnz == 0
    assert "X_pca" not in pbmc_counts.obsm
    assert "log1p" not in pbmc_counts.uns


def test_pca_normalizes_to_the_median_library_like_scanpy(pbmc_counts):
    import scanpy as sc

    median = baselines.median_library_size(pbmc_counts)
    totals = np.asarray(pbmc_counts.X.sum(axis=1)).ravel()
    assert median == float(np.median(totals))
    # scanpy's own default (target_sum=None) is the median: the embeddings agree.
    ref = pbmc_counts.copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    sc.pp.pca(ref, n_comps=5, random_state=0)
    emb = baselines.pca_embedding(pbmc_counts, n_components=5)
    assert np.allclose(np.abs(emb), np.abs(ref.obsm["X_pca"]), atol=1e-3)
    # ... and differ from a fixed 1e4 per cell.
    fixed = baselines.pca_embedding(pbmc_counts, n_components=5, target_sum=1e4)
    assert not np.allclose(np.abs(emb), np.abs(fixed), atol=1e-3)


def test_baseline_variant_names():
    assert baselines.baseline_variant("pca", 10) == "pca10"
    assert baselines.parse_baseline_variant("pca50") == ("pca", 50)
    assert baselines.parse_baseline_variant("scvi10") == ("scvi", 10)
    assert baselines.parse_baseline_variant("scvi") == ("scvi", None)
    assert baselines.parse_baseline_variant("beta_vae") is None


def test_cluster_several_resolutions_with_umap(pbmc_pca):
    out = tl.cluster(pbmc_pca, resolutions=(1.0, 0.5), seed=0, copy=True)
    assert "scvae_leiden" not in pbmc_pca.obs  # copy=True leaves the input alone
    for col in ("scvae_leiden", "scvae_leiden_r1.0", "scvae_leiden_r0.5"):
        assert isinstance(out.obs[col].dtype, pd.CategoricalDtype)
    assert out.obs["scvae_leiden"].equals(out.obs["scvae_leiden_r1.0"])
    assert out.obsm["X_umap"].shape == (N_CELLS, 2)
    params = out.uns["scvae"]["cluster"]["params"]
    assert params["keys"] == ["scvae_leiden_r1.0", "scvae_leiden_r0.5"]
    assert params["resolutions"] == [1.0, 0.5]
    assert params["n_clusters"][0] == out.obs["scvae_leiden"].nunique()
    # a lower resolution never gives more clusters here
    assert params["n_clusters"][1] <= params["n_clusters"][0]


def test_cluster_single_resolution_in_place_and_reproducible(pbmc_pca):
    a = pbmc_pca.copy()
    assert tl.cluster(a, resolutions=[1.0], umap=False, seed=3) is None
    assert "scvae_leiden" in a.obs
    assert not any(c.startswith("scvae_leiden_r") for c in a.obs)
    assert "X_umap" not in a.obsm
    b = tl.cluster(pbmc_pca, resolutions=[1.0], umap=False, seed=3, copy=True)
    assert a.obs["scvae_leiden"].equals(b.obs["scvae_leiden"])


def test_score_with_labels(pbmc_pca):
    adata = tl.cluster(pbmc_pca, resolutions=(1.0, 0.5), umap=False, copy=True)
    m = tl.score(adata, rng=0)
    for key in (
        "leiden_ari_r1.0",
        "leiden_nmi_r0.5",
        "n_clusters_r1.0",
        "leiden_ari",
        "kmeans_ari",
        "kmeans_nmi",
        "asw_label",
        "knn_purity",
    ):
        assert key in m, key
    assert m["leiden_ari"] == m["leiden_ari_r1.0"]
    assert m["n_clusters"] == adata.obs["scvae_leiden"].nunique()
    # PCA separates PBMC cell types reasonably even on 600 cells
    assert 0.3 < m["kmeans_ari"] <= 1.0
    assert 0.5 < m["knn_purity"] <= 1.0
    assert 0.5 < m["asw_label"] <= 1.0
    assert "modularity" not in m
    assert adata.uns["scvae"]["cluster"]["metrics"] == m
    assert tl.score(adata, rng=0) == m
    tl.cluster(adata, resolutions=[0.8], umap=False)  # re-clustering drops stale metrics
    assert set(adata.uns["scvae"]["cluster"]) == {"params"}


def test_score_without_labels_and_with_partial_labels(pbmc_pca):
    adata = tl.cluster(pbmc_pca, umap=False, copy=True)
    unlabelled = adata.copy()
    del unlabelled.obs["label"]
    m = tl.score(unlabelled)
    assert set(m) == {
        "n_clusters_r1.0",
        "modularity_r1.0",
        "silhouette_r1.0",
        "n_clusters",
        "modularity",
        "silhouette",
    }
    assert 0.3 < m["modularity"] < 1.0
    assert -1.0 <= m["silhouette"] <= 1.0

    partial = adata.copy()
    partial.obs.loc[partial.obs_names[:50], "label"] = np.nan
    mp = tl.score(partial)
    assert partial.uns["scvae"]["cluster"]["score_params"]["n_labelled"] == N_CELLS - 50
    assert not math.isnan(mp["kmeans_ari"])


def test_missing_or_bad_embedding_is_an_input_error(pbmc_counts):
    with pytest.raises(InputError, match="X_scvae"):
        tl.cluster(pbmc_counts, copy=True)
    bad = pbmc_counts.copy()
    bad.obsm["X_scvae"] = np.full((bad.n_obs, 3), np.nan)
    with pytest.raises(InputError, match="NaN"):
        tl.cluster(bad)
    with pytest.raises(InputError, match="uns"):
        good = pbmc_counts.copy()
        good.obsm["X_scvae"] = np.zeros((good.n_obs, 2))
        tl.score(good)


def test_run_baseline_and_run_cluster_round_trip(pbmc_counts, tmp_path):
    src = tmp_path / "pre.h5ad"
    pbmc_counts.write_h5ad(src)
    base = tmp_path / "pca10.h5ad"
    rec = baselines.run_baseline(src, base, method="pca", n_components=10, seed=0)
    assert rec["status"] == "ok"
    written = ad.read_h5ad(base)
    assert written.obsm["X_scvae"].shape == (N_CELLS, 10)
    assert written.uns["scvae"]["baseline"]["method"] == "pca"
    assert written.uns["scvae"]["baseline"]["n_components"] == 10
    assert rec["target_sum"] == baselines.median_library_size(pbmc_counts)
    assert sp.issparse(written.X) and written.X.max() == pbmc_counts.X.max()  # X untouched

    out_h5ad, out_json = tmp_path / "final.h5ad", tmp_path / "metrics.json"
    record = tl.run_cluster(
        base, out_h5ad, out_json, resolutions=[1.0, 0.5], n_neighbors=15, seed=0
    )
    on_disk = json.loads(out_json.read_text())
    assert on_disk == record
    assert on_disk["status"] == "ok"
    assert on_disk["baseline"]["method"] == "pca"
    assert on_disk["cluster"]["resolutions"] == [1.0, 0.5]
    assert on_disk["score"]["has_labels"] is True
    final = ad.read_h5ad(out_h5ad)
    stored = final.uns["scvae"]["cluster"]
    assert dict(stored["metrics"]) == pytest.approx(on_disk["metrics"])
    assert list(stored["params"]["keys"]) == ["scvae_leiden_r1.0", "scvae_leiden_r0.5"]
    assert final.obsm["X_umap"].shape == (N_CELLS, 2)
    assert isinstance(final.obs["scvae_leiden_r0.5"].dtype, pd.CategoricalDtype)
    # score() works again on the reloaded file (params came back as arrays)
    assert tl.score(final)["kmeans_ari"] == pytest.approx(on_disk["metrics"]["kmeans_ari"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_baseline_cli_target_sum_and_cluster_kmeans_fits(pbmc_counts, tmp_path):
    from scvae import cli

    src, base = tmp_path / "pre.h5ad", tmp_path / "pca10.h5ad"
    pbmc_counts.write_h5ad(src)
    args = ["baseline", "--input", str(src), "--output", str(base), "--method", "pca"]
    cli.main([*args, "--n-components", "10", "--target-sum", "10000"])
    written = ad.read_h5ad(base)
    assert written.uns["scvae"]["baseline"]["target_sum"] == 10000.0
    fixed = baselines.pca_embedding(pbmc_counts, n_components=10, target_sum=1e4)
    np.testing.assert_allclose(written.obsm["X_scvae"], fixed, rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit):
        cli.main([*args, "--target-sum", "-3"])
    assert baselines.parse_target_sum("median") is None
    assert baselines.parse_target_sum(1e4) == 10000.0
    for bad in ("mean", 0, -3):
        with pytest.raises(ValueError, match="median"):
            baselines.parse_target_sum(bad)

    labels = pbmc_counts.obs["label"].to_numpy()
    fits = {}
    for n in (1, 3):
        out = tl.run_cluster(
            base, tmp_path / f"f{n}.h5ad", tmp_path / f"m{n}.json", kmeans_fits=n, seed=4
        )
        assert out["score"]["kmeans_fits"] == n
        expected = M.kmeans_ari_nmi(fixed, labels, rng=4, n_repeats=n)
        assert out["metrics"]["kmeans_ari"] == pytest.approx(expected["ari"], abs=1e-6)
        fits[n] = out["metrics"]["kmeans_ari"]
    # the data have several KMeans optima, so the setting visibly changes the score
    assert fits[1] != pytest.approx(fits[3], abs=1e-6)


def test_run_cluster_on_trained_output_with_diagnostics_and_umap_plot(pbmc_pca, tmp_path):
    latent = pbmc_pca.copy()
    latent.uns["scvae"] = {
        "train": {
            "model": {"n_latent": 10, "likelihood": "nb"},
            "summary": {"epochs": 7, "train_seconds": 3.5, "stopped_early": False},
            "versions": {"torch": "x"},
        }
    }
    run_dir = tmp_path / "results" / "toy" / "beta" / "seed2"
    run_dir.mkdir(parents=True)
    latent.write_h5ad(run_dir / "latent.h5ad")
    diag = {
        "verdict": "healthy",
        "verdict_reason": "fine",
        "mi": 2.5,
        "active_units": 9,
        "kl_per_dim": [1.0, None, 0.5],
        "kl_total": 1.5,
        "iwae_ll_per_cell": -800.0,
        "validation": {},
        "settings": {"k_iwae": 10},
        "big": list(range(5)),
    }
    (run_dir / "diagnostics.json").write_text(json.dumps(diag))
    record = tl.run_cluster(
        run_dir / "latent.h5ad",
        run_dir / "final.h5ad",
        run_dir / "metrics.json",
        resolutions=[0.5, 1.0],
        diagnostics_json=run_dir / "diagnostics.json",
        umap_plot=run_dir / "figures" / "umap.png",
    )
    assert record["train"] == {
        "n_latent": 10,
        "likelihood": "nb",
        "epochs": 7,
        "train_seconds": 3.5,
        "stopped_early": False,
    }
    assert record["diagnostics"]["kl_per_dim"] == [1.0, None, 0.5]
    assert "big" not in record["diagnostics"] and record["diagnostics"]["verdict"] == "healthy"
    assert "leiden_ari_r0.5" in record["metrics"]
    assert record["metrics"]["leiden_ari"] == record["metrics"]["leiden_ari_r0.5"]  # primary
    final = ad.read_h5ad(run_dir / "final.h5ad")
    stored = final.uns["scvae"]["diagnostics"]
    assert stored["verdict"] == "healthy"
    assert np.isnan(stored["kl_per_dim"][1])
    assert final.uns["scvae"]["train"]["summary"]["epochs"] == 7
    assert (run_dir / "figures" / "umap.png").read_bytes()[:4] == b"\x89PNG"


def test_unavailable_scvi_baseline_flows_through(pbmc_counts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scvi", None)  # makes `import scvi` raise ImportError
    with pytest.raises(baselines.BaselineUnavailable, match="scvi-tools"):
        baselines.scvi_embedding(pbmc_counts)
    assert issubclass(baselines.BaselineUnavailable, ImportError)

    src = tmp_path / "pre.h5ad"
    small = pbmc_counts[:50].copy()
    small.obsm["X_scvae"] = np.zeros((50, 2))  # stale model output must not survive
    small.write_h5ad(src)
    base = tmp_path / "scvi10.h5ad"
    rec = baselines.run_baseline(src, base, method="scvi", n_components=10)
    assert rec["status"] == "unavailable"
    written = ad.read_h5ad(base)
    assert "X_scvae" not in written.obsm
    assert "scvi-tools" in written.uns["scvae"]["baseline"]["unavailable"]

    out_json = tmp_path / "metrics.json"
    umap = tmp_path / "umap.png"
    record = tl.run_cluster(base, tmp_path / "final.h5ad", out_json, umap_plot=umap)
    assert umap.is_file()  # a placeholder panel, so the pipeline's output exists
    assert record["status"] == "unavailable"
    assert record["metrics"] == {}
    assert "scvi-tools" in json.loads(out_json.read_text())["reason"]


def test_unknown_baseline_method(tmp_path):
    with pytest.raises(InputError, match="unknown baseline"):
        baselines.run_baseline(
            tmp_path / "x.h5ad", tmp_path / "y.h5ad", method="umap", n_components=2
        )


def test_metrics_json_nan_is_null(tmp_path):
    path = tmp_path / "m.json"
    tl.write_json({"metrics": {"a": float("nan"), "b": np.float32(0.5), "n": np.int64(3)}}, path)
    assert json.loads(path.read_text()) == {"metrics": {"a": None, "b": 0.5, "n": 3}}
    assert math.isnan(tl.read_metrics_json(path)["metrics"]["a"])


def test_too_few_cells_for_umap_or_pca_name_the_file(tmp_path):
    tiny = ad.AnnData(X=sp.csr_matrix(np.arange(1, 31, dtype=np.float32).reshape(3, 10)))
    tiny.layers["counts"] = tiny.X.copy()
    tiny.obsm["X_scvae"] = np.random.default_rng(0).normal(size=(3, 2))
    path = tmp_path / "latent.h5ad"
    tiny.write_h5ad(path)
    with pytest.raises(InputError, match=rf"^{path}: UMAP needs at least 4 cells, got 3"):
        tl.run_cluster(path, tmp_path / "final.h5ad", tmp_path / "metrics.json")
    with pytest.raises(InputError, match=rf"^{path}: n_components must be in \[1, 2\]"):
        baselines.run_baseline(path, tmp_path / "pca.h5ad", method="pca", n_components=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.h5ad"]
