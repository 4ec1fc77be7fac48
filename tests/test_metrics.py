from __future__ import annotations

import math

import igraph as ig
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from scvae import metrics as M


def _blobs(n_per: int = 30, k: int = 3, dim: int = 4, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10, size=(k, dim))
    X = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centres])
    labels = np.repeat([f"type{i}" for i in range(k)], n_per)
    return X, labels


def test_all_lists_each_metric_once():
    assert sorted(M.__all__) == sorted(set(M.__all__))
    assert set(M.__all__) == {
        "ari",
        "nmi",
        "asw_label",
        "knn_purity",
        "kmeans_ari_nmi",
        "silhouette_clusters",
        "modularity",
    }


def test_ari_nmi_match_sklearn_and_ignore_label_type():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
    assert M.ari(t, p) == pytest.approx(adjusted_rand_score(t, p))
    assert M.nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p))
    names = np.array(["a", "b", "c", "d"])[t]
    assert M.ari(names, p) == pytest.approx(M.ari(t, p))
    assert M.ari(t, t) == 1.0
    assert M.nmi(t, t) == pytest.approx(1.0)


def test_label_validation():
    with pytest.raises(ValueError, match="entries"):
        M.ari([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="missing"):
        M.nmi(np.array(["a", None, "b"], dtype=object), [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.knn_purity(np.array([[0.0], [np.nan], [1.0]]), [0, 1, 1], k=1)


def test_asw_label_is_scib_rescaled_sklearn_silhouette():
    X, labels = _blobs(spread=3.0)
    expected = (silhouette_score(X, labels) + 1) / 2
    assert M.asw_label(X, labels) == pytest.approx(expected)
    assert 0.0 <= M.asw_label(X, labels) <= 1.0


def test_silhouette_clusters_is_raw_and_nan_when_undefined():
    X, labels = _blobs(spread=3.0)
    assert M.silhouette_clusters(X, labels) == pytest.approx(silhouette_score(X, labels))
    assert math.isnan(M.silhouette_clusters(X, np.zeros(len(X), dtype=int)))
    assert math.isnan(M.asw_label(X, np.zeros(len(X), dtype=int)))


def test_silhouette_subsamples_reproducibly_without_global_rng():
    X, labels = _blobs(n_per=40, spread=5.0)
    state = np.random.get_state()  # noqa: NPY002 - checking the legacy global state
    a = M.asw_label(X, labels, max_cells=50, rng=7)
    b = M.asw_label(X, labels, max_cells=50, rng=np.random.default_rng(7))
    c = M.asw_label(X, labels, max_cells=50, rng=8)
    assert a == b
    assert a != c
    assert M.asw_label(X, labels, max_cells=None) == M.asw_label(X, labels, max_cells=len(X))
    after = np.random.get_state()  # noqa: NPY002 - the global RNG must not move
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]


def test_knn_purity_hand_computed():
    X = np.array([[0.0], [1.0], [3.0], [10.0], [12.0]])
    labels = np.array(["a", "a", "b", "b", "b"])
    # k=1: 0->1 ok, 1->0 ok, 3->1 wrong, 10->12 ok, 12->10 ok
    assert M.knn_purity(X, labels, k=1) == pytest.approx(4 / 5)
    # k=2: 0->{1,3} 1/2, 1->{0,3} 1/2, 3->{1,0} 0, 10->{12,3} 1, 12->{10,3} 1
    assert M.knn_purity(X, labels, k=2) == pytest.approx(3 / 5)


def test_knn_purity_excludes_self_even_with_duplicates():
    X = np.array([[0.0], [0.0], [5.0], [5.0]])
    assert M.knn_purity(X, ["a", "b", "a", "b"], k=1) == 0.0
    assert M.knn_purity(X, ["a", "a", "b", "b"], k=1) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        M.knn_purity(X, [0, 0, 1, 1], k=4)


def test_kmeans_ari_nmi_separated_blobs_and_reproducible():
    X, labels = _blobs()
    out = M.kmeans_ari_nmi(X, labels, rng=0)
    assert out == {"ari": pytest.approx(1.0), "nmi": pytest.approx(1.0)}
    Xn, ln = _blobs(spread=8.0, seed=3)
    assert M.kmeans_ari_nmi(Xn, ln, rng=3) == M.kmeans_ari_nmi(Xn, ln, rng=3)
    # 1 cluster for 3 labels: no agreement
    assert M.kmeans_ari_nmi(X, labels, n_clusters=1)["ari"] == pytest.approx(0.0)


def test_kmeans_scores_are_the_mean_over_seeded_fits():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    # Overlapping blobs: KMeans optima differ between seeds, so the mean is not one fit.
    X, labels = _blobs(spread=8.0, seed=5)
    preds = [KMeans(3, n_init=2, random_state=7 + r).fit_predict(X) for r in range(4)]
    expected_ari = np.mean([adjusted_rand_score(labels, p) for p in preds])
    expected_nmi = np.mean([normalized_mutual_info_score(labels, p) for p in preds])
    out = M.kmeans_ari_nmi(X, labels, rng=7, n_init=2, n_repeats=4)
    assert out["ari"] == pytest.approx(expected_ari)
    assert out["nmi"] == pytest.approx(expected_nmi)
    single = M.kmeans_ari_nmi(X, labels, rng=7, n_init=2, n_repeats=1)
    assert single["ari"] == pytest.approx(adjusted_rand_score(labels, preds[0]))
    with pytest.raises(ValueError, match="n_repeats"):
        M.kmeans_ari_nmi(X, labels, n_repeats=0)


def _random_graph(n: int = 40, density: float = 0.15, seed: int = 0, symmetric: bool = True):
    rng = np.random.default_rng(seed)
    A = sp.random(n, n, density=density, random_state=rng, format="csr")
    A.setdiag(0)
    A.eliminate_zeros()
    return (A + A.T).tocsr() if symmetric else A


@pytest.mark.parametrize("resolution", [1.0, 0.5])
def test_modularity_matches_igraph_on_weighted_graph(resolution):
    A = _random_graph()
    clusters = np.random.default_rng(1).integers(0, 4, A.shape[0])
    g = ig.Graph.Weighted_Adjacency(A.toarray(), mode="undirected", attr="weight")
    expected = g.modularity(clusters.tolist(), weights="weight", resolution=resolution)
    assert M.modularity(A, clusters, resolution=resolution) == pytest.approx(expected)
    assert M.modularity(A.toarray(), clusters, resolution=resolution) == pytest.approx(expected)


def test_modularity_matches_scanpy_leiden_graph_for_asymmetric_input_and_self_loops():
    A = _random_graph(symmetric=False, seed=2).tolil()
    A[0, 0] = 0.7  # a self-loop
    A = A.tocsr()
    clusters = np.random.default_rng(3).integers(0, 3, A.shape[0])
    # the graph scanpy.tl.leiden(directed=False) builds
    src, dst = A.nonzero()
    g = ig.Graph(n=A.shape[0], edges=list(zip(src, dst, strict=True)), directed=False)
    g.es["weight"] = np.asarray(A[src, dst]).ravel()
    expected = g.modularity(clusters.tolist(), weights="weight")
    assert M.modularity(A, clusters) == pytest.approx(expected)


def test_modularity_edge_cases():
    A = _random_graph()
    assert M.modularity(A, np.zeros(A.shape[0], dtype=int)) == pytest.approx(0.0)
    assert math.isnan(M.modularity(sp.csr_matrix((5, 5)), np.arange(5)))
    with pytest.raises(ValueError, match="square"):
        M.modularity(sp.csr_matrix((5, 4)), np.arange(5))


def test_seed_from_passes_ints_through_and_draws_from_generators():
    assert M.seed_from(7) == 7
    a = M.seed_from(np.random.default_rng(0))
    assert a == M.seed_from(np.random.default_rng(0)) and 0 <= a < 2**31 - 1
