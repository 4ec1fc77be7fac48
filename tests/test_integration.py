"""scIB integration metrics (scib-metrics) of an embedding with batches, and their aggregates."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvae import integration as I
from scvae.errors import InputError

N, DIMS = 240, 8
LABELS = np.repeat(["a", "b", "c"], N // 3)
BATCHES = np.tile(["x", "y"], N // 2)


def _embeddings() -> dict[str, np.ndarray]:
    """Three well-separated cell types; ``separated`` also shifts each batch far away."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, DIMS))
    mixed = centres[pd.factorize(LABELS)[0]] + rng.normal(size=(N, DIMS))
    shift = np.where(BATCHES[:, None] == "x", 0.0, 12.0) * np.eye(DIMS)[0]
    return {
        "mixed": mixed.astype(np.float32),
        "separated": (mixed + shift).astype(np.float32),
    }


@pytest.fixture(scope="module")
def embeddings() -> dict[str, np.ndarray]:
    return _embeddings()


@pytest.fixture(scope="module")
def scores(embeddings) -> dict[str, dict[str, float]]:
    # The separated embedding is the unintegrated reference of the PCR comparison.
    X_pre = embeddings["separated"]
    return {name: I.scib_scores(X, BATCHES, LABELS, X_pre=X_pre) for name, X in embeddings.items()}


def test_aggregates_weigh_bio_0_6_and_batch_0_4():
    bio = dict(zip(I.BIO_AGGREGATE, [0.9, 0.8, 0.7, 0.6, 1.0], strict=True))
    batch = dict(zip(["bras", "ilisi", "kbet", "graph_connectivity", "pcr_comparison"],
                     [0.5, 0.1, 0.2, 0.9, 0.3], strict=True))  # fmt: skip
    # reported beside the aggregates but, as in scib-metrics' defaults, not averaged in
    extra = {"leiden_nmi": 0.0, "leiden_ari": 0.0, "silhouette_batch": 0.0}
    out = I.aggregate_scores({**bio, **batch, **extra})
    assert out["bio"] == pytest.approx(0.8)
    assert out["batch"] == pytest.approx(0.4)
    assert out["total"] == pytest.approx(0.6 * 0.8 + 0.4 * 0.4)
    # a metric that could not be computed is skipped, as the Benchmarker's mean skips it
    assert I.aggregate_scores({**bio, **batch, "kbet": math.nan})["batch"] == pytest.approx(
        (0.5 + 0.1 + 0.9 + 0.3) / 4
    )
    # label-free: a batch aggregate of what there is, no bio and no total
    assert I.aggregate_scores({"ilisi": 0.2, "kbet_global": 0.4, "pcr_comparison": 0.9}) == {
        "batch": pytest.approx(0.5)
    }


def test_mixed_batches_score_higher_on_batch_correction(scores):
    mixed, separated = scores["mixed"], scores["separated"]
    assert list(mixed) == [c for c in I.SCIB_COLUMNS if c in mixed]
    assert set(mixed) == {
        I.scib_key(m) for m in I.SCIB_AGGREGATES + I.BIO_METRICS + I.BATCH_METRICS
    }
    for metric in ("batch", "ilisi", "kbet", "bras", "silhouette_batch", "pcr_comparison"):
        key = I.scib_key(metric)
        assert mixed[key] > separated[key] + 0.3, (metric, mixed[key], separated[key])
    assert mixed["scib_total"] > separated["scib_total"]
    # the cell types are well separated in both: bio conservation stays high
    assert mixed["scib_clisi"] == pytest.approx(1.0)
    assert separated["scib_bio"] > 0.6
    # every value is a number in [0, 1], and the aggregates are the weighted means
    assert all(0.0 <= v <= 1.0 for v in mixed.values())
    agg = I.aggregate_scores({k.removeprefix("scib_"): v for k, v in mixed.items()})
    assert mixed["scib_total"] == pytest.approx(agg["total"])
    assert mixed["scib_total"] == pytest.approx(0.6 * mixed["scib_bio"] + 0.4 * mixed["scib_batch"])


def test_scores_equal_scib_metrics_benchmarker(embeddings, scores):
    # The reference: scib-metrics' own pipeline on the same embeddings, unscaled.
    from scib_metrics.benchmark import Benchmarker

    adata = ad.AnnData(
        X=np.zeros((N, 1), dtype=np.float32),
        obs=pd.DataFrame({"batch": BATCHES, "label": LABELS}, index=[str(i) for i in range(N)]),
    )
    for name, X in embeddings.items():
        adata.obsm[name] = X
    adata.obsm["pre"] = embeddings["separated"]
    bm = Benchmarker(
        adata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=list(embeddings),
        pre_integrated_embedding_obsm_key="pre",
        progress_bar=False,
    )
    bm.benchmark()
    results = bm.get_results(min_max_scale=False)
    names = {
        "Total": "total",
        "Bio conservation": "bio",
        "Batch correction": "batch",
        "Isolated labels": "isolated_labels",
        "KMeans NMI": "kmeans_nmi",
        "KMeans ARI": "kmeans_ari",
        "Silhouette label": "silhouette_label",
        "cLISI": "clisi",
        "BRAS": "bras",
        "iLISI": "ilisi",
        "KBET": "kbet",
        "Graph connectivity": "graph_connectivity",
        "PCR comparison": "pcr_comparison",
    }
    for name in embeddings:
        for column, metric in names.items():
            expected = float(results.loc[name, column])
            assert scores[name][I.scib_key(metric)] == pytest.approx(expected, abs=1e-6), (
                name,
                metric,
            )


def test_label_free_scores_are_batch_scores_only(embeddings):
    X = embeddings["separated"]
    out = I.scib_scores(X, BATCHES, None, X_pre=X)
    assert set(out) == {"scib_ilisi", "scib_kbet_global", "scib_pcr_comparison", "scib_batch"}
    assert out["scib_batch"] == pytest.approx(
        np.mean([out["scib_ilisi"], out["scib_kbet_global"], out["scib_pcr_comparison"]])
    )
    mixed = I.scib_scores(embeddings["mixed"], BATCHES, None, X_pre=X)
    assert mixed["scib_kbet_global"] > out["scib_kbet_global"] + 0.3
    assert mixed["scib_ilisi"] > out["scib_ilisi"] + 0.3


def test_scores_are_deterministic(embeddings, scores):
    again = I.scib_scores(embeddings["mixed"], BATCHES, LABELS, X_pre=embeddings["separated"])
    # fixed seeds; JAX's float32 reductions may differ in the last bits between calls
    assert again == pytest.approx(scores["mixed"], abs=1e-6)


def test_scib_scores_checks_its_input(embeddings):
    X = embeddings["mixed"]
    with pytest.raises(ValueError, match="two batches"):
        I.scib_scores(X, np.repeat("x", N), LABELS, X_pre=X)
    with pytest.raises(ValueError, match="one entry per cell"):
        I.scib_scores(X, BATCHES[:-1], LABELS, X_pre=X)
    with pytest.raises(ValueError, match="missing"):
        I.scib_scores(X, BATCHES, np.where(LABELS == "a", None, LABELS), X_pre=X)
    with pytest.raises(ValueError, match="X_pre"):
        I.scib_scores(X, BATCHES, LABELS, X_pre=X[:-1])
    with pytest.raises(ValueError, match="finite"):
        I.scib_scores(np.full_like(X, np.nan), BATCHES, LABELS, X_pre=X)


def _counts_adata(embedding: np.ndarray) -> ad.AnnData:
    rng = np.random.default_rng(1)
    # counts whose expression follows the embedding's first dimensions
    rates = np.exp(np.clip(embedding[:, :4] / 4.0, -3, 3)) @ rng.uniform(0.5, 3, (4, 30))
    counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
    adata = ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame(
            {"batch": pd.Categorical(BATCHES), "label": pd.Categorical(LABELS)},
            index=[f"c{i}" for i in range(N)],
        ),
    )
    adata.layers["counts"] = counts
    adata.obsm["X_scvae"] = embedding
    return adata


def test_unintegrated_pca_of_log_normalized_counts(embeddings):
    adata = _counts_adata(embeddings["separated"])
    pre = I.unintegrated_pca(adata.layers["counts"])
    assert pre.shape == (N, 29)  # min(50, genes - 1) components
    # the same as scanpy's normalize_total + log1p + ARPACK PCA of a dense copy
    import scanpy as sc

    work = ad.AnnData(X=adata.layers["counts"].toarray())
    sc.pp.normalize_total(work)
    sc.pp.log1p(work)
    sc.tl.pca(work, n_comps=29, svd_solver="arpack")
    assert np.abs(pre).sum(axis=0) == pytest.approx(
        np.abs(work.obsm["X_pca"]).sum(axis=0), rel=1e-3
    )


def test_integration_scores_on_anndata(embeddings, caplog):
    adata = _counts_adata(embeddings["separated"])
    out = I.integration_scores(adata, batch_key="batch", label_key="label")
    assert "scib_total" in out and "scib_kbet" in out
    stored = adata.uns["scvae"]["cluster"]
    assert stored["metrics"] == out
    params = stored["scib_params"]
    assert params["has_labels"] is True
    assert (params["n_cells"], params["n_batches"]) == (N, 2)
    assert params["bio_aggregate"] == list(I.BIO_AGGREGATE)
    assert params["reference"] == "PCA (29 components) of log-normalized layers['counts']"
    # the reference PCA of these counts keeps the batch shift, the embedding too
    assert out["scib_pcr_comparison"] < 0.5

    # cells without a label are left out of every scIB metric
    partly = _counts_adata(embeddings["separated"])
    partly.obs["label"] = partly.obs["label"].astype(object)
    partly.obs.loc[partly.obs_names[:30], "label"] = None
    I.integration_scores(partly)
    assert partly.uns["scvae"]["cluster"]["scib_params"]["n_cells"] == N - 30

    # no labels: the label-free batch scores only
    unlabelled = _counts_adata(embeddings["separated"])
    del unlabelled.obs["label"]
    out = I.integration_scores(unlabelled)
    assert set(out) == {"scib_ilisi", "scib_kbet_global", "scib_pcr_comparison", "scib_batch"}
    assert unlabelled.uns["scvae"]["cluster"]["scib_params"]["bio_aggregate"] == []

    # a single batch: nothing to integrate, nothing computed
    one = _counts_adata(embeddings["separated"])
    one.obs["batch"] = "x"
    assert I.integration_scores(one) == {}
    assert "single batch" in caplog.text


def test_integration_scores_errors_name_the_problem(embeddings):
    adata = _counts_adata(embeddings["mixed"])
    with pytest.raises(InputError, match=r"obs\['plate'\] not found.*'batch', 'label'"):
        I.integration_scores(adata, batch_key="plate")
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.loc[adata.obs_names[0], "batch"] = None
    with pytest.raises(InputError, match="missing for 1 cells"):
        I.integration_scores(adata)
    with pytest.raises(InputError, match="X_missing"):
        I.integration_scores(_counts_adata(embeddings["mixed"]), use_rep="X_missing")


# The issue's anchors (scib-metrics 0.5.10's Benchmarker, defaults, unscaled): the
# unintegrated PCA of the preprocessed data, 50 components on the log-normalized counts
# of the 2000 highly variable genes (seurat_v3 with the batch key).
ANCHORS = {
    "cellbench_5batches_counts.h5ad": ("batch", "cell_line", 0.671, 0.420, 0.838),
    "kang_ifnb_2conditions_counts.h5ad": ("condition", "cell_type", 0.473, 0.259, 0.615),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ANCHORS))
def test_unintegrated_pca_reproduces_the_issue_anchors(shared_data, name):
    import scanpy as sc

    batch_key, label_key, total, batch, bio = ANCHORS[name]
    adata = ad.read_h5ad(shared_data / name)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    # the preprocessing stage's default filters, then seurat_v3 with the batch key
    sc.pp.filter_cells(adata, min_genes=5)
    sc.pp.filter_genes(adata, min_cells=3)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(
        adata,
        flavor="seurat_v3",
        n_top_genes=2000,
        batch_key=batch_key,
        layer="counts",
        subset=True,
    )
    adata.obsm["X_pca"] = I.unintegrated_pca(adata.layers["counts"])
    out = I.integration_scores(adata, use_rep="X_pca", batch_key=batch_key, label_key=label_key)
    assert round(out["scib_total"], 3) == total
    assert round(out["scib_batch"], 3) == batch
    assert round(out["scib_bio"], 3) == bio
    assert out["scib_pcr_comparison"] == pytest.approx(0.0, abs=1e-6)
