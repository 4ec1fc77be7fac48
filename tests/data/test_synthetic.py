"""Synthetic counts: the file, the seed and recoverable clusters; cells resampled from real ones."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
from scipy import sparse

from scvae.data.synthetic import (
    resample_cells,
    synthetic_counts,
    write_resampled,
    write_synthetic_h5ad,
)


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


# ------------------------------------------------------------------ resampled real cells

# Mean of a log-uniform fraction on [0.5, 1]: (1 - 0.5) / log(1 / 0.5).
LOG_UNIFORM_MEAN = 0.5 / np.log(2.0)


@pytest.fixture(scope="module")
def pbmc4k(shared_data):
    """PBMC 4k (4,271 cells x 2,000 genes, 8 labels) as scvae reads it."""
    from scvae.data.readers import read_counts

    return read_counts(shared_data / "pbmc4k_top2000.h5")


def _source_rows(new: anndata.AnnData, source: anndata.AnnData) -> np.ndarray:
    rows = source.obs_names.get_indexer(new.obs["source_cell"].astype(str))
    assert (rows >= 0).all()
    return rows


def test_resampled_cells_thin_their_source_cell(small_counts):
    new = resample_cells(small_counts, 1000, rng=3)
    assert new.shape == (1000, 40) and (new.var_names == small_counts.var_names).all()
    assert sparse.issparse(new.X) and new.X.dtype == np.float32
    assert (new.layers["counts"] != new.X).nnz == 0
    rows = _source_rows(new, small_counts)
    src = small_counts.X[rows]
    # Thinning only removes counts: every entry, hence every cell's sum, at most the source's.
    assert (new.X > src).nnz == 0
    assert (new.X.sum(1) <= src.sum(1)).all()
    assert np.array_equal(new.X.data, np.round(new.X.data)) and new.X.data.min() > 0
    # Labels inherited; every source cell used 16 or 17 times (1000 = 16 x 60 + 40).
    assert (new.obs["cell_type"].to_numpy() == small_counts.obs["cell_type"].to_numpy()[rows]).all()
    assert set(np.bincount(rows, minlength=60)) == {16, 17}
    f = new.obs["depth_fraction"].to_numpy()
    assert f.min() >= 0.5 and f.max() <= 1.0
    assert new.uns["resampled"]["seed"] == 3
    assert new.uns["resampled"]["n_source_cells"] == 60
    # Fewer cells than the source: a subsample without repeats.
    few = resample_cells(small_counts, 25, rng=0)
    assert few.obs["source_cell"].astype(str).is_unique


def test_resampled_depth_is_the_drawn_fraction_of_the_source(pbmc4k):
    new = resample_cells(pbmc4k, 20_000, rng=0)
    source_depth = np.asarray(pbmc4k.X.sum(1)).ravel()[_source_rows(new, pbmc4k)]
    ratio = np.asarray(new.X.sum(1)).ravel() / source_depth
    f = new.obs["depth_fraction"].to_numpy()
    # Log-uniform on [0.5, 1]: its mean, and each cell's depth its own fraction of the
    # source's (binomial noise of a ~1,000-count cell: s.d. ~0.015).
    assert abs(f.mean() - LOG_UNIFORM_MEAN) < 0.005
    assert abs(ratio.mean() - LOG_UNIFORM_MEAN) < 0.005
    assert np.median(np.abs(ratio - f)) < 0.02
    assert np.corrcoef(np.log(f), np.log(ratio))[0, 1] > 0.9
    fixed = resample_cells(pbmc4k, 5000, depth=(0.25, 0.25), rng=0)
    total = np.asarray(pbmc4k.X.sum(1)).ravel()[_source_rows(fixed, pbmc4k)].sum()
    assert abs(fixed.X.sum() / total - 0.25) < 0.002


def test_resampled_cells_are_reproducible_per_seed(small_counts):
    a = resample_cells(small_counts, 500, rng=11)
    b = resample_cells(small_counts, 500, rng=np.random.default_rng(11))
    assert (a.X != b.X).nnz == 0
    assert (a.obs["source_cell"] == b.obs["source_cell"]).all()
    assert "seed" not in b.uns["resampled"]  # a Generator has no seed to record
    c = resample_cells(small_counts, 500, rng=12)
    assert (a.X != c.X).nnz > 0


def _lognorm(X) -> np.ndarray:
    X = np.asarray(X.todense())
    return np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)


def _offdiag_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the off-diagonal entries of two gene-gene correlation matrices."""
    upper = np.triu_indices(a.shape[1], 1)
    ca, cb = np.corrcoef(a, rowvar=False), np.corrcoef(b, rowvar=False)
    return float(np.corrcoef(ca[upper], cb[upper])[0, 1])


def test_resampled_cells_keep_the_gene_gene_structure(pbmc4k):
    new = resample_cells(pbmc4k, 12_000, rng=5)
    top = np.argsort(-np.asarray(pbmc4k.X.sum(0)).ravel())[:200]
    src, res = _lognorm(pbmc4k.X[:, top]), _lognorm(new.X[:, top])
    # Across all cells (cell types and gene programs) ...
    assert _offdiag_agreement(src, res) > 0.95
    # ... within each of the three largest cell types (co-expression, not type means;
    # weaker correlations, so thinning noise weighs more: 0.92-0.93 measured) ...
    labels_src, labels_new = pbmc4k.obs["label"].to_numpy(), new.obs["label"].to_numpy()
    for label in pbmc4k.obs["label"].value_counts().index[:3]:
        assert _offdiag_agreement(src[labels_src == label], res[labels_new == label]) > 0.85
    # ... and of the per-label mean profiles.
    labels = pbmc4k.obs["label"].cat.categories
    means_src = np.stack([src[labels_src == k].mean(0) for k in labels])
    means_new = np.stack([res[labels_new == k].mean(0) for k in labels])
    assert _offdiag_agreement(means_src, means_new) > 0.9
    # The measure can fail: genes shuffled independently across cells keep every gene's
    # distribution but no gene-gene structure.
    shuffled = res.copy()
    rng = np.random.default_rng(0)
    for j in range(shuffled.shape[1]):
        rng.shuffle(shuffled[:, j])
    assert abs(_offdiag_agreement(src, shuffled)) < 0.2


def test_write_resampled_file_opens_and_equals_the_in_memory_cells(tmp_path, shared_data):
    from scvae.data.readers import read_counts

    source = shared_data / "kang_ifnb_2conditions_counts.h5ad"
    path = write_resampled(
        source, tmp_path / "kang.h5ad", 3000, rng=4, label_key="cell_type", batch_key="condition"
    )
    a = anndata.read_h5ad(path)
    assert a.shape == (3000, 6998)
    assert a.X.dtype == np.float32 and a.X.indptr.dtype == a.X.indices.dtype
    assert (a.layers["counts"] != a.X).nnz == 0
    # Categories inherited; count summaries (n_counts, n_genes) dropped as stale.
    assert {"label", "cell_type", "batch", "condition", "source_cell", "depth_fraction"} <= set(
        a.obs.columns
    )
    assert "n_counts" not in a.obs and "n_genes" not in a.obs
    assert (a.obs["label"].astype(str) == a.obs["cell_type"].astype(str)).all()
    assert a.uns["resampled"]["source"] == str(source) and a.uns["resampled"]["seed"] == 4
    # The same cells as resample_cells of the same source and seed.
    from scvae.data.batches import read_dataset

    src = read_dataset(source, label_key="cell_type", batch_key="condition")
    mem = resample_cells(src, 3000, rng=4)
    assert (mem.X != a.X).nnz == 0
    assert (mem.obs["batch"].to_numpy() == a.obs["batch"].to_numpy()).all()
    rows = _source_rows(a, src)
    assert (a.obs["condition"].to_numpy() == src.obs["condition"].to_numpy()[rows]).all()
    # scvae's reader (the workflow's input) and a backed read open it.
    again = read_counts(path, label_key="label")
    assert again.shape == (3000, 6998) and (again.X != a.X).nnz == 0
    backed = anndata.read_h5ad(path, backed="r")
    assert (backed.X[np.array([0, 2999])] != a.X[[0, 2999]]).nnz == 0
    # No temporary files left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kang.h5ad"]


def test_resample_rejects_bad_arguments(small_counts, tmp_path):
    from scvae.errors import InputError

    with pytest.raises(InputError, match=r"0 < low <= high <= 1"):
        resample_cells(small_counts, 10, depth=(0.5, 1.5))
    with pytest.raises(InputError, match="n_cells must be a positive integer"):
        resample_cells(small_counts, 0)
    with pytest.raises(InputError, match=r"obs_keys \['donor'\]"):
        resample_cells(small_counts, 10, obs_keys=["donor"])
    with pytest.raises(InputError, match=r"layer 'raw' is not in the AnnData"):
        resample_cells(small_counts, 10, layer="raw")
    normalized = small_counts.copy()
    normalized.X = normalized.X * 0.5
    with pytest.raises(InputError, match="non-integer|integer"):
        resample_cells(normalized, 10)
    with pytest.raises(InputError, match="apply to a source file"):
        write_resampled(small_counts, tmp_path / "x.h5ad", 10, label_key="cell_type")
    assert not (tmp_path / "x.h5ad").exists()


def test_make_resampled_script_cuts_genes_and_writes_each_size(tmp_path, shared_data):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "make_resampled.py"
    spec = importlib.util.spec_from_file_location("make_resampled", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = str(shared_data / "kang_ifnb_2conditions_counts.h5ad")
    args = ["--source", source, "--label-key", "cell_type", "--batch-key", "condition"]
    out = str(tmp_path / "kang_{n_cells}.h5ad")
    module.main(
        [*args, "--n-cells", "300", "700", "--n-top-genes", "500", "--seed", "2", "--out", out]
    )
    for n in (300, 700):
        a = anndata.read_h5ad(tmp_path / f"kang_{n}.h5ad")
        assert a.shape == (n, 500)
        assert a.obs["batch"].nunique() == 2 and a.obs["label"].nunique() > 1
        assert a.uns["resampled"]["seed"] == 2
    with pytest.raises(SystemExit, match=r"\{n_cells\}"):
        module.main([*args, "--n-cells", "300", "700", "--out", str(tmp_path / "k.h5ad")])
