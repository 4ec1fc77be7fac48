from __future__ import annotations

import json
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scvae import compare
from scvae.errors import InputError
from scvae.stages.compare import run_compare


def _metrics(ari: float, nmi: float, **extra) -> dict:
    return {
        "schema_version": 1,
        "status": "ok",
        "reason": "",
        "metrics": {
            "kmeans_ari": ari,
            "kmeans_nmi": nmi,
            "leiden_ari": ari - 0.05,
            "leiden_nmi": nmi - 0.05,
            "leiden_ari_r1.0": ari - 0.05,
            "asw_label": 0.6,
            "knn_purity": 0.8,
            "n_clusters": 9,
        },
        "train": {"n_latent": 10, "epochs": 50, "train_seconds": 12.5},
        "baseline": {},
        **extra,
    }


def _diag(verdict: str, au: int, mi: float, kl_per_dim: list[float] | None = None) -> dict:
    return {
        "verdict": verdict,
        "verdict_reason": "synthetic",
        "mi": mi,
        "active_units": au,
        "kl_per_dim": kl_per_dim or [0.1] * 10,
        "kl_total": 12.0,
        "kl_aggregate": 0.4,
        "iwae_ll_per_cell": -900.0,
    }


def _write(tmp_path, name: str, obj: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture
def records(tmp_path) -> list[dict]:
    recs = []
    # "good": best scores, healthy; "collapsed": higher score but collapsed;
    # "mid": healthy, lower score; pca10 baseline; scvi10 unavailable baseline.
    for seed, (a, n) in enumerate([(0.80, 0.75), (0.70, 0.73)]):
        recs.append(
            {
                "variant": "good",
                "seed": seed,
                "metrics": _write(tmp_path, f"good{seed}.json", _metrics(a, n)),
                "diagnostics": _write(
                    tmp_path, f"good{seed}_d.json", _diag("ok", 8, 3.0 + seed, [2, 0.01, 5] * 3)
                ),
            }
        )
    for seed in range(2):
        recs.append(
            {
                "variant": "collapsed",
                "seed": seed,
                "metrics": _metrics(0.95, 0.95),
                "diagnostics": _diag("Collapsed", 0, 0.01),
            }
        )
    recs.append(
        {
            "variant": "mid",
            "seed": 0,
            "metrics": _metrics(0.5, 0.5),
            "diagnostics": _diag("ok", 5, 1),
        }
    )
    pca = _metrics(0.6, 0.6, baseline={"method": "pca", "n_components": 10, "seconds": 1.5})
    pca["train"] = {}
    recs.append({"variant": "pca10", "seed": 0, "metrics": pca, "diagnostics": None})
    scvi = {
        "status": "unavailable",
        "reason": "no scvi-tools",
        "metrics": {},
        "train": {},
        "baseline": {"method": "scvi", "n_components": 10, "unavailable": "no scvi-tools"},
    }
    recs.append({"variant": "scvi10", "seed": 0, "metrics": scvi})
    return recs


def test_collect_columns_and_values(records):
    df = compare.collect([{**r, "dataset": "toy"} for r in records])
    assert list(df.columns) == compare.COLUMNS + compare.EXTRA_COLUMNS
    assert len(df) == 7
    good0 = df[(df.variant == "good") & (df.seed == 0)].iloc[0]
    assert good0["kmeans_ari"] == 0.80
    assert good0["active_units"] == 8
    assert good0["n_latent"] == 10
    assert good0["epochs"] == 50
    assert good0["kind"] == "vae"
    assert good0["score"] == pytest.approx((0.80 + 0.75) / 2)
    pca = df[df.variant == "pca10"].iloc[0]
    assert pca["kind"] == "baseline"
    assert pca["n_latent"] == 10 and pca["train_seconds"] == 1.5
    assert math.isnan(pca["mi"]) and pca["verdict"] == ""
    scvi = df[df.variant == "scvi10"].iloc[0]
    assert scvi["status"] == "unavailable" and math.isnan(scvi["score"])
    assert df.loc[df.variant == "collapsed", "collapsed"].all()
    assert not df.loc[df.variant == "good", "collapsed"].any()


def test_collect_tolerates_missing_keys():
    df = compare.collect([{"dataset": "d", "variant": "v", "seed": 1, "metrics": {}}])
    row = df.iloc[0]
    assert row["status"] == "ok"
    assert all(math.isnan(row[c]) for c in ("kmeans_ari", "mi", "n_latent", "epochs", "score"))


def test_collect_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        compare.collect([{"variant": "v", "seed": 0, "metrics": str(tmp_path / "nope.json")}])


def test_unlabelled_score_uses_silhouette():
    rec = {"metrics": {"silhouette": 0.3, "n_clusters": 4, "modularity": 0.7}}
    df = compare.collect([{"dataset": "d", "variant": "v", "seed": 0, "metrics": rec}])
    assert df.loc[0, "score"] == 0.3


def test_summarize_ranks_collapsed_and_unscored_last(records):
    summary = compare.summarize(compare.collect([{**r, "dataset": "toy"} for r in records]))
    assert list(summary["variant"]) == ["good", "pca10", "mid", "collapsed", "scvi10"]
    assert list(summary["rank"]) == [1, 2, 3, 4, 5]
    good = summary.iloc[0]
    assert good["n_seeds"] == 2
    assert good["kmeans_ari_mean"] == pytest.approx(0.75)
    assert good["kmeans_ari_sd"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert good["mi_mean"] == pytest.approx(3.5)
    assert good["verdicts"] == "ok x2"
    assert math.isnan(summary.set_index("variant").loc["mid", "kmeans_ari_sd"])  # one seed
    collapsed = summary.set_index("variant").loc["collapsed"]
    assert collapsed["collapsed"] and collapsed["n_collapsed"] == 2
    assert summary.set_index("variant").loc["scvi10", "n_ok"] == 0


def test_kl_per_dim_sorted_and_averaged(records):
    kl = compare.collect_kl_per_dim(records)
    assert list(kl.index) == ["good", "collapsed", "mid"]
    assert kl.shape == (3, 10)
    assert list(kl.loc["good"].iloc[:4]) == [5, 5, 5, 2]
    assert np.isnan(kl.loc["good"].iloc[9])  # good has 9 dims, padded
    assert compare.collect_kl_per_dim([{"variant": "pca10", "metrics": {}}]).empty


def test_run_compare_writes_tsvs(records, tmp_path):
    out, out_sum = tmp_path / "runs.tsv", tmp_path / "summary.tsv"
    runs, summary = run_compare("toy", records, out, out_sum)
    back = pd.read_csv(out, sep="\t")
    assert list(back.columns) == compare.COLUMNS + compare.EXTRA_COLUMNS
    assert len(back) == len(runs) == 7
    assert (back["dataset"] == "toy").all()
    assert back["mi"].isna().sum() == 2  # baselines have no diagnostics
    back_sum = pd.read_csv(out_sum, sep="\t")
    assert list(back_sum["variant"]) == list(summary["variant"])
    with pytest.raises(InputError):
        run_compare("toy", [], out, out_sum)


def test_make_records_zips_and_checks_lengths():
    recs = compare.make_records(["a", "pca10"], [0, 0], ["m1", "m2"], ["d1", None])
    assert recs[1] == {
        "variant": "pca10",
        "seed": 0,
        "metrics": "m2",
        "diagnostics": None,
        "train": None,
    }
    with pytest.raises(InputError, match="same length"):
        compare.make_records(["a"], [0, 1], ["m"])


def _final_h5ad(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(np.zeros((80, 3), dtype=np.float32))
    labels = rng.integers(0, 3, 80)
    adata.obs["label"] = pd.Categorical(labels.astype(str))
    adata.obs["scvae_leiden"] = pd.Categorical(labels.astype(str))
    adata.obsm["X_umap"] = rng.normal(size=(80, 2)) + labels[:, None] * 4
    adata.write_h5ad(path)


def test_run_compare_from_run_dirs_with_figures_and_notes(tmp_path):
    root = tmp_path / "results" / "toy"
    dirs = []
    for variant, seed in [("beta", 0), ("beta", 1), ("pca10", 0)]:
        d = root / variant / f"seed{seed}"
        d.mkdir(parents=True)
        metrics = _metrics(0.7 + 0.05 * seed, 0.7)
        if variant == "pca10":
            metrics["baseline"] = {"method": "pca", "n_components": 10}
        else:
            # as run_cluster writes it: the diagnostics summary inside the metrics JSON
            metrics["diagnostics"] = _diag("healthy", 7, 2.0 + seed, [0.5, 2.0, None])
            hist = pd.DataFrame(
                {
                    "epoch": np.arange(1, 21),
                    "kl_weight": np.linspace(0, 1, 20),
                    "train_elbo": -1000 + np.arange(20.0),
                    "val_elbo": -1010 + np.arange(20.0),
                    "train_kl": np.linspace(1, 10, 20),
                    "val_kl": np.linspace(1, 11, 20),
                }
            )
            hist.to_csv(d / "history.tsv", sep="\t", index=False)
        (d / "metrics.json").write_text(json.dumps(metrics))
        _final_h5ad(d / "final.h5ad", seed)
        dirs.append(str(d))

    rec = compare.record_from_run_dir(dirs[1])
    assert (rec["variant"], rec["seed"]) == ("beta", 1)
    assert rec["diagnostics"] is None and rec["history"] is not None

    figs = tmp_path / "figures"
    runs, summary = run_compare(
        "toy", dirs, tmp_path / "c.tsv", tmp_path / "s.tsv", figure_dir=figs, notes=["scvi skipped"]
    )
    assert list(runs["seed"]) == [0, 1, 0]
    assert list(runs["active_units"].iloc[:2]) == [7, 7]
    assert runs.loc[2, "kind"] == "baseline"
    assert list(summary["variant"]) == ["beta", "pca10"]
    for name in compare.FIGURES:
        assert (figs / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    assert (figs / "notes.txt").read_text() == "scvi skipped\n"
    kl = compare.collect_kl_per_dim([compare.record_from_run_dir(d) for d in dirs])
    assert list(kl.index) == ["beta"]
    assert list(kl.loc["beta"].iloc[:2]) == [2.0, 0.5]


def _scib(total: float, bio: float, batch: float) -> dict:
    return {
        "scib_total": total,
        "scib_bio": bio,
        "scib_batch": batch,
        "scib_isolated_labels": bio,
        "scib_kmeans_ari": bio,
        "scib_ilisi": batch,
        "scib_kbet": batch,
    }


def _batch_final_h5ad(path, seed: int) -> None:
    _final_h5ad(path, seed)
    adata = ad.read_h5ad(path)
    adata.obs["batch"] = pd.Categorical(np.tile(["p1", "p2"], adata.n_obs // 2))
    adata.uns["scvae"] = {
        "preprocess": {"batch_key": "batch"},
        "cluster": {"metrics": {"scib_batch": 0.4}},
    }
    adata.write_h5ad(path)


def test_compare_carries_and_ranks_by_scib_metrics(tmp_path):
    root = tmp_path / "results" / "plates"
    dirs = []
    # "keeps_batches" has the better KMeans scores but mixes the batches worse:
    # a dataset with batches ranks by scib_total instead.
    runs_spec = [
        ("keeps_batches", 0, 0.90, _scib(0.55, 0.80, 0.18)),
        ("keeps_batches", 1, 0.88, _scib(0.57, 0.82, 0.20)),
        ("integrates", 0, 0.70, _scib(0.75, 0.78, 0.70)),
        ("integrates", 1, 0.72, _scib(0.77, 0.80, 0.72)),
        ("pca50", 0, 0.80, _scib(0.67, 0.84, 0.42)),
    ]
    for variant, seed, kmeans, scib in runs_spec:
        d = root / variant / f"seed{seed}"
        d.mkdir(parents=True)
        metrics = _metrics(kmeans, kmeans)
        metrics["metrics"].update(scib)
        metrics["scib"] = {"batch_key": "batch", "has_labels": True}
        if variant == "pca50":
            metrics["baseline"] = {"method": "pca", "n_components": 50}
        (d / "metrics.json").write_text(json.dumps(metrics))
        _batch_final_h5ad(d / "final.h5ad", seed)
        dirs.append(str(d))

    figs = tmp_path / "figures"
    runs, summary = run_compare(
        "plates", dirs, tmp_path / "c.tsv", tmp_path / "s.tsv", figure_dir=figs
    )
    scib_columns = [
        "scib_total",
        "scib_bio",
        "scib_batch",
        "scib_isolated_labels",
        "scib_kmeans_ari",
        "scib_ilisi",
        "scib_kbet",
    ]
    assert list(runs.columns) == compare.COLUMNS + compare.EXTRA_COLUMNS + scib_columns
    assert list(runs["score"]) == list(runs["scib_total"])
    assert list(summary["variant"]) == ["integrates", "pca50", "keeps_batches"]
    best = summary.iloc[0]
    assert best["scib_total_mean"] == pytest.approx(0.76)
    assert best["scib_total_sd"] == pytest.approx(np.std([0.75, 0.77], ddof=1))
    assert best["scib_bio_mean"] == pytest.approx(0.79)
    # the TSVs carry them too
    on_disk = pd.read_csv(tmp_path / "c.tsv", sep="\t")
    assert on_disk["scib_kbet"].tolist() == pytest.approx(runs["scib_kbet"].tolist())
    assert "scib_batch_sd" in pd.read_csv(tmp_path / "s.tsv", sep="\t").columns
    for name in (*compare.FIGURES, compare.SCIB_FIGURE):
        assert (figs / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name


def test_scib_ranking_is_per_dataset(records):
    # A dataset without scIB metrics keeps the KMeans score even next to one with them.
    other = [{**r, "dataset": "b"} for r in records[:1]]  # one run of a dataset with batches
    other[0]["metrics"] = _metrics(0.1, 0.1)
    other[0]["metrics"]["metrics"].update(_scib(0.9, 0.9, 0.9))
    df = compare.collect([{**r, "dataset": "a"} for r in records] + other)
    a = df[df["dataset"] == "a"]
    assert a["score"].tolist() == pytest.approx(
        ((a["kmeans_ari"] + a["kmeans_nmi"]) / 2).tolist(), nan_ok=True
    )
    assert df.loc[df["dataset"] == "b", "score"].tolist() == [0.9]


def test_no_scib_table_without_batches(records, tmp_path):
    figs = tmp_path / "figures"
    run_compare("toy", records, tmp_path / "c.tsv", tmp_path / "s.tsv", figure_dir=figs)
    assert not (figs / f"{compare.SCIB_FIGURE}.png").exists()
