"""The cluster stage: an embedding's h5ad to a clustered h5ad and a metrics JSON."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.image import imread

from scvae import baseline
from scvae import metrics as M
from scvae.data.runfiles import read_run
from scvae.errors import InputError
from scvae.scores import score
from scvae.stages import cluster
from scvae.stages.baseline import run_baseline
from scvae.utils.jsonio import write_json

N_CELLS = 600  # cells of the pbmc_counts fixture
KANG = Path(__file__).resolve().parents[2] / "resources" / "kang"
KANG /= "kang_ifnb_2conditions_counts.h5ad"


def test_run_baseline_and_run_cluster_round_trip(pbmc_counts, tmp_path):
    src = tmp_path / "pre.h5ad"
    pbmc_counts.write_h5ad(src)
    base = tmp_path / "pca10.h5ad"
    rec = run_baseline(src, base, method="pca", n_components=10, seed=0)
    assert rec["status"] == "ok"
    written = ad.read_h5ad(base)
    assert written.obsm["X_scvae"].shape == (N_CELLS, 10)
    assert written.uns["scvae"]["baseline"]["method"] == "pca"
    assert written.uns["scvae"]["baseline"]["n_components"] == 10
    assert rec["target_sum"] == baseline.median_library_size(pbmc_counts)
    assert written.X is None and not written.layers  # the counts stay in the input
    full = read_run(base)
    assert sp.issparse(full.X) and (full.X != pbmc_counts.X).nnz == 0

    out_h5ad, out_json = tmp_path / "final.h5ad", tmp_path / "metrics.json"
    record = cluster.run_cluster(
        base, out_h5ad, out_json, resolutions=[1.0, 0.5], n_neighbors=15, seed=0
    )
    on_disk = json.loads(out_json.read_text())
    assert on_disk == record
    assert on_disk["status"] == "ok"
    assert on_disk["baseline"]["method"] == "pca"
    assert on_disk["cluster"]["resolutions"] == [1.0, 0.5]
    assert on_disk["score"]["has_labels"] is True
    assert on_disk["scib"] == {}  # no batches: no scIB metrics
    assert not [k for k in on_disk["metrics"] if k.startswith("scib_")]
    final = read_run(out_h5ad)
    stored = final.uns["scvae"]["cluster"]
    assert dict(stored["metrics"]) == pytest.approx(on_disk["metrics"])
    assert list(stored["params"]["keys"]) == ["scvae_leiden_r1.0", "scvae_leiden_r0.5"]
    assert final.obsm["X_umap"].shape == (N_CELLS, 2)
    assert isinstance(final.obs["scvae_leiden_r0.5"].dtype, pd.CategoricalDtype)
    # score() works again on the reloaded file (params came back as arrays)
    assert score(final)["kmeans_ari"] == pytest.approx(on_disk["metrics"]["kmeans_ari"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_run_cluster_averages_kmeans_fits(pbmc_counts, tmp_path):
    src, base = tmp_path / "pre.h5ad", tmp_path / "pca10.h5ad"
    pbmc_counts.write_h5ad(src)
    run_baseline(src, base, method="pca", n_components=10, target_sum=1e4)
    fixed = baseline.pca_embedding(pbmc_counts, n_components=10, target_sum=1e4)
    labels = pbmc_counts.obs["label"].to_numpy()
    fits = {}
    for n in (1, 3):
        out = cluster.run_cluster(
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
    record = cluster.run_cluster(
        run_dir / "latent.h5ad",
        run_dir / "final.h5ad",
        run_dir / "metrics.json",
        resolutions=[0.5, 1.0],
        diagnostics_json=run_dir / "diagnostics.json",
        umap_plot=run_dir / "figures" / "umap.png",
        markers_tsv=run_dir / "markers.tsv",
        marker_plot=run_dir / "figures" / "markers.png",
        marker_genes=4,
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
    # Marker genes of the clusters and of the labels, in uns and the table.
    table = pd.read_csv(run_dir / "markers.tsv", sep="\t")
    clusters = final.obs["scvae_leiden"].astype(str)
    assert set(table["groupby"]) == {"scvae_leiden", "label"}
    by_cluster = table[table["groupby"] == "scvae_leiden"]
    assert set(by_cluster["group"].astype(str)) == set(clusters)
    assert (by_cluster.groupby("group")["rank"].max() == 4).all()
    assert set(final.uns["rank_genes_groups"]["names"].dtype.names) == set(clusters)
    assert final.uns["rank_genes_groups_label"]["params"]["groupby"] == "label"
    assert (run_dir / "figures" / "markers.png").read_bytes()[:4] == b"\x89PNG"


def test_unavailable_scvi_baseline_flows_through(pbmc_counts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scvi", None)  # makes `import scvi` raise ImportError
    src = tmp_path / "pre.h5ad"
    pbmc_counts[:50].copy().write_h5ad(src)
    base = tmp_path / "scvi10.h5ad"
    assert run_baseline(src, base, method="scvi", n_components=10)["status"] == ("unavailable")

    out_json = tmp_path / "metrics.json"
    umap = tmp_path / "umap.png"
    record = cluster.run_cluster(
        base,
        tmp_path / "final.h5ad",
        out_json,
        umap_plot=umap,
        markers_tsv=tmp_path / "markers.tsv",
        marker_plot=tmp_path / "markers.png",
        known_markers={"B": ["gene1"]},
        known_markers_plot=tmp_path / "known_markers.png",
    )
    assert umap.is_file()  # a placeholder panel, so the pipeline's output exists
    assert (tmp_path / "markers.png").is_file()
    assert (tmp_path / "known_markers.png").is_file()
    assert pd.read_csv(tmp_path / "markers.tsv", sep="\t").empty  # header only
    assert record["status"] == "unavailable"
    assert record["metrics"] == {}
    assert "scvi-tools" in json.loads(out_json.read_text())["reason"]


def test_run_cluster_draws_known_markers_by_label_and_cluster(tmp_path, caplog):
    kang = ad.read_h5ad(KANG)
    kang = kang[np.sort(np.random.default_rng(0).choice(kang.n_obs, 600, replace=False))].copy()
    kang.X = kang.X.astype(np.float32)
    kang.layers["counts"] = kang.X.copy()
    kang.obs["label"] = kang.obs["cell_type"]
    kang.write_h5ad(tmp_path / "pre.h5ad")
    base = tmp_path / "pca10.h5ad"
    run_baseline(tmp_path / "pre.h5ad", base, method="pca", n_components=10)
    known = {"B": ["MS4A1", "CD79A"], "NK": ["NKG7", "GNLY"], "T": ["NOT-A-GENE"]}
    plot = tmp_path / "figures" / "known_markers.png"
    with caplog.at_level(logging.WARNING, logger="scvae.markers"):
        cluster.run_cluster(
            base,
            tmp_path / "final.h5ad",
            tmp_path / "metrics.json",
            scib=False,
            markers=False,  # the known markers' figure does not need the ranking
            known_markers=known,
            known_markers_plot=plot,
        )
    assert "['NOT-A-GENE']" in caplog.text
    # Two panels (7 labels, the clusters) are taller than a note (200 pixels).
    drawn = imread(plot)
    assert drawn.shape[0] > 600 and drawn.shape[1] < 2 * drawn.shape[0]
    # Without known markers the declared figure is a note.
    cluster.run_cluster(
        base,
        tmp_path / "final2.h5ad",
        tmp_path / "metrics2.json",
        scib=False,
        markers=False,
        known_markers_plot=tmp_path / "note.png",
    )
    assert imread(tmp_path / "note.png").shape[:2] == (200, 500)


def test_metrics_json_nan_is_null(tmp_path):
    path = tmp_path / "m.json"
    write_json({"metrics": {"a": float("nan"), "b": np.float32(0.5), "n": np.int64(3)}}, path)
    assert json.loads(path.read_text()) == {"metrics": {"a": None, "b": 0.5, "n": 3}}
    assert math.isnan(cluster.read_metrics_json(path)["metrics"]["a"])


def test_too_few_cells_for_umap_name_the_file(tmp_path):
    tiny = ad.AnnData(X=sp.csr_matrix(np.arange(1, 31, dtype=np.float32).reshape(3, 10)))
    tiny.layers["counts"] = tiny.X.copy()
    tiny.obsm["X_scvae"] = np.random.default_rng(0).normal(size=(3, 2))
    path = tmp_path / "latent.h5ad"
    tiny.write_h5ad(path)
    with pytest.raises(InputError, match=rf"^{path}: UMAP needs at least 4 cells, got 3"):
        cluster.run_cluster(path, tmp_path / "final.h5ad", tmp_path / "metrics.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent.h5ad"]


def _batch_latent(path, *, batch_key: str | None = "batch") -> None:
    """A small latent h5ad with two batches, as the pipeline writes it for batch data."""
    rng = np.random.default_rng(0)
    n, genes = 240, 30
    labels = np.repeat(["a", "b", "c"], n // 3)
    batches = np.tile(["p1", "p2"], n // 2)
    centres = rng.normal(0, 5, (3, 6))
    z = centres[pd.factorize(labels)[0]] + rng.normal(size=(n, 6))
    z[:, 0] += np.where(batches == "p2", 10.0, 0.0)  # a batch effect left in the latent
    rates = np.exp(np.clip(z[:, :3] / 4, -3, 3)) @ rng.uniform(0.5, 3, (3, genes))
    counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
    adata = ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame(
            {"label": pd.Categorical(labels), "batch": pd.Categorical(batches)},
            index=[f"c{i}" for i in range(n)],
        ),
    )
    adata.layers["counts"] = counts
    adata.obsm["X_scvae"] = z.astype(np.float32)
    preprocess = {"covariate_keys": []}
    if batch_key is not None:
        preprocess["batch_key"] = batch_key
    adata.uns["scvae"] = {"preprocess": preprocess}
    adata.write_h5ad(path)


def test_run_cluster_adds_scib_metrics_for_data_with_batches(tmp_path, monkeypatch):
    drawn = {}
    original = cluster.plot_umap_grid

    def spy(*args, **kwargs):
        fig = original(*args, **kwargs)
        drawn["titles"] = [ax.get_title() for ax in fig.axes]
        return fig

    monkeypatch.setattr(cluster, "plot_umap_grid", spy)  # the stage's name for it
    src = tmp_path / "latent.h5ad"
    _batch_latent(src)
    out_json, umap = tmp_path / "metrics.json", tmp_path / "umap.png"
    record = cluster.run_cluster(src, tmp_path / "final.h5ad", out_json, umap_plot=umap)
    on_disk = json.loads(out_json.read_text())
    assert on_disk == record and on_disk["schema_version"] == 2
    metrics = on_disk["metrics"]
    for key in ("scib_total", "scib_bio", "scib_batch", "scib_ilisi", "scib_kbet", "scib_clisi"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["scib_total"] == pytest.approx(
        0.6 * metrics["scib_bio"] + 0.4 * metrics["scib_batch"]
    )
    assert "kmeans_ari" in metrics  # the label scores are still there
    assert on_disk["scib"]["batch_key"] == "batch"
    assert on_disk["scib"]["n_batches"] == 2
    final = ad.read_h5ad(tmp_path / "final.h5ad")
    assert final.uns["scvae"]["cluster"]["metrics"]["scib_total"] == pytest.approx(
        metrics["scib_total"]
    )
    # the run's UMAP: label, batch and clusters side by side
    assert umap.read_bytes()[:4] == b"\x89PNG"
    label_title, batch_title, cluster_title = drawn["titles"][:3]
    assert "cell-type label" in label_title
    assert "batch (2)" in batch_title and "scIB batch correction" in batch_title
    assert "Leiden clusters" in cluster_title

    # scib=False skips them
    record = cluster.run_cluster(src, tmp_path / "f2.h5ad", tmp_path / "m2.json", scib=False)
    assert not [k for k in record["metrics"] if k.startswith("scib_")]
    assert record["scib"] == {}


def test_run_cluster_without_batches_has_no_scib_metrics(tmp_path):
    src = tmp_path / "latent.h5ad"
    _batch_latent(src, batch_key=None)
    record = cluster.run_cluster(src, tmp_path / "final.h5ad", tmp_path / "metrics.json")
    assert not [k for k in record["metrics"] if k.startswith("scib_")]
    assert record["scib"] == {}


def test_run_cluster_names_the_file_when_the_batch_column_is_missing(tmp_path):
    src = tmp_path / "latent.h5ad"
    _batch_latent(src, batch_key="plate")
    with pytest.raises(InputError, match=rf"^{src}: obs\['plate'\] not found"):
        cluster.run_cluster(src, tmp_path / "final.h5ad", tmp_path / "metrics.json")


def test_batch_key_of():
    adata = ad.AnnData(np.zeros((2, 1)))
    assert cluster.batch_key_of(adata) is None
    adata.uns["scvae"] = {"preprocess": {"batch_key": None}}
    assert cluster.batch_key_of(adata) is None
    adata.uns["scvae"]["preprocess"]["batch_key"] = ""
    assert cluster.batch_key_of(adata) is None
    adata.uns["scvae"]["preprocess"]["batch_key"] = np.array("batch")
    assert cluster.batch_key_of(adata) == "batch"


def test_run_cluster_adds_decoded_expression_only_when_asked(small_counts, tmp_path):
    from scvae.decode import DECODED_LAYER
    from scvae.model import SCVAE
    from scvae.stages.train import run_train

    small_counts.write_h5ad(tmp_path / "pre.h5ad")
    fast = {"n_latent": 3, "n_hidden": 8, "threads": 1, "max_epochs": 1}
    outputs = [tmp_path / name for name in ("model.pt", "history.tsv", "latent.h5ad")]
    run_train(tmp_path / "pre.h5ad", *outputs, settings=fast)
    model = SCVAE.load(tmp_path / "model.pt")
    # Off by default, even with the model at hand; on, from the model; a baseline (no
    # model) has no decoder, so asking for it there writes nothing and is no error.
    for options, written in (
        ({"model_path": tmp_path / "model.pt"}, False),
        ({"model_path": tmp_path / "model.pt", "decoded": True}, True),
        ({"decoded": True}, False),
    ):
        out = tmp_path / f"final{len(options)}{written}.h5ad"
        cluster.run_cluster(
            tmp_path / "latent.h5ad", out, tmp_path / "metrics.json", markers=False, **options
        )
        final = ad.read_h5ad(out)
        assert (DECODED_LAYER in final.layers) is written, options
        assert ("decoded" in final.uns["scvae"]) is written, options
    final = ad.read_h5ad(tmp_path / "final2True.h5ad")
    decoded = final.layers[DECODED_LAYER]
    np.testing.assert_allclose(decoded.sum(1), 1e4, rtol=1e-4)
    want = model.get_normalized_expression(read_run(tmp_path / "latent.h5ad"))
    np.testing.assert_allclose(decoded, want, rtol=1e-6)
    assert final.uns["scvae"]["decoded"]["model"] == str(tmp_path / "model.pt")
