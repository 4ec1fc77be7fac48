"""read_counts: every input format into one AnnData layout, and clear errors on bad input."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import sparse

from scvae.data.formats import FORMATS, detect_format
from scvae.data.readers import read_counts
from scvae.errors import InputError

# ----------------------------------------------------------------- file writers


def write_10x_h5_v3(path: Path, adata: anndata.AnnData) -> None:
    """Cell Ranger v3 layout: genes x cells CSC stored as CSR of the transpose."""
    X = sparse.csr_matrix(adata.X).astype(np.int32)
    n_cells, n_genes = X.shape
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(adata.obs_names, dtype="S")
        g["data"] = X.data
        g["indices"] = X.indices.astype(np.int64)
        g["indptr"] = X.indptr.astype(np.int64)
        g["shape"] = np.array([n_genes, n_cells], dtype=np.int32)
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(n_genes)], dtype="S")
        feats["name"] = np.array(adata.var_names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * n_genes, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * n_genes, dtype="S")


def write_10x_h5_v2(path: Path, adata: anndata.AnnData) -> None:
    X = sparse.csr_matrix(adata.X).astype(np.int32)
    n_cells, n_genes = X.shape
    with h5py.File(path, "w") as f:
        g = f.create_group("GRCh38")
        g["barcodes"] = np.array(adata.obs_names, dtype="S")
        g["data"] = X.data
        g["indices"] = X.indices.astype(np.int64)
        g["indptr"] = X.indptr.astype(np.int64)
        g["shape"] = np.array([n_genes, n_cells], dtype=np.int32)
        g["genes"] = np.array([f"ENSG{i:05d}" for i in range(n_genes)], dtype="S")
        g["gene_names"] = np.array(adata.var_names, dtype="S")


def write_10x_mtx(folder: Path, adata: anndata.AnnData) -> Path:
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sparse.csr_matrix(adata.X.T).astype(np.int64))
    features = pd.DataFrame(
        {"id": adata.var_names, "name": adata.var_names, "type": "Gene Expression"}
    )
    features.to_csv(folder / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names).to_csv(folder / "barcodes.tsv", header=False, index=False)
    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        with open(folder / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (folder / name).unlink()
    return folder


def write_xy_h5(path: Path, X: np.ndarray, y: np.ndarray | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f["X"] = X
        if y is not None:
            f["Y"] = y
    return path


def dense(adata: anndata.AnnData) -> np.ndarray:
    return np.asarray(adata.X.todense())


def assert_contract(adata: anndata.AnnData, path: Path, fmt: str) -> None:
    assert isinstance(adata.X, sparse.csr_matrix)
    assert adata.X.dtype == np.float32
    assert (adata.layers["counts"] != adata.X).nnz == 0
    assert adata.layers["counts"] is not adata.X
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert adata.uns["scvae"]["input"] == {"path": str(path), "format": fmt}


# ------------------------------------------------------------------- real data


def test_10x_mtx_real(shared_data):
    path = shared_data / "celltypist_sample_10x_mtx"
    adata = read_counts(path)
    assert adata.shape == (559, 32786)
    assert_contract(adata, path, "10x_mtx")
    assert adata.var_names.str.startswith("MT-").sum() > 10
    assert "label" not in adata.obs


@pytest.mark.parametrize(
    ("name", "shape", "n_labels"),
    [("pbmc4k_top2000.h5", (4271, 2000), 8), ("worm_neuron_top2000.h5", (4186, 2000), 10)],
)
def test_xy_h5_real(shared_data, name, shape, n_labels):
    path = shared_data / name
    assert detect_format(path) == "xy_h5"
    adata = read_counts(path)
    assert adata.shape == shape
    assert_contract(adata, path, "xy_h5")
    labels = adata.obs["label"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == [str(i) for i in range(1, n_labels + 1)]
    assert adata.obs_names[0] == "cell_0" and adata.var_names[-1] == f"gene_{shape[1] - 1}"
    with h5py.File(path) as f:
        np.testing.assert_array_equal(dense(adata)[:50], f["X"][:50])
        assert labels.iloc[3] == str(int(f["Y"][3]))


@pytest.mark.parametrize(
    ("folder", "name"),
    [("pbmc4k", "pbmc4k_top2000.h5"), ("kang", "kang_ifnb_2conditions_counts.h5ad")],
)
def test_bundled_data_match_shared(shared_data, folder, name):
    bundled = Path(__file__).resolve().parents[2] / "resources" / folder / name
    assert bundled.read_bytes() == (shared_data / name).read_bytes()


# --------------------------------------------------------- small written files


def test_h5ad_counts_in_x(tmp_path, small_counts):
    path = tmp_path / "a.h5ad"
    small_counts.write_h5ad(path)
    adata = read_counts(path, label_key="cell_type")
    assert_contract(adata, path, "h5ad")
    np.testing.assert_array_equal(dense(adata), small_counts.X.toarray())
    assert list(adata.obs["label"]) == list(small_counts.obs["cell_type"].astype(str))


def test_h5ad_counts_in_layer(tmp_path, small_counts):
    normalized = small_counts.copy()
    sc.pp.normalize_total(normalized, target_sum=1e4)
    sc.pp.log1p(normalized)
    path = tmp_path / "norm.h5ad"
    normalized.write_h5ad(path)
    adata = read_counts(path, layer="counts")
    np.testing.assert_array_equal(dense(adata), small_counts.X.toarray())
    with pytest.raises(InputError) as err:
        read_counts(path)
    msg = str(err.value)
    assert str(path) in msg and "normalized or log-transformed" in msg and "'counts'" in msg
    with pytest.raises(InputError, match="no layer 'raw'.*'counts'"):
        read_counts(path, layer="raw")


def test_loom(tmp_path, small_counts):
    path = tmp_path / "a.loom"
    small_counts.write_loom(path)
    adata = read_counts(path, label_key="cell_type")
    assert detect_format(path) == "loom"
    assert_contract(adata, path, "loom")
    assert list(adata.obs_names) == list(small_counts.obs_names)
    assert list(adata.var_names) == list(small_counts.var_names)
    np.testing.assert_array_equal(dense(adata), small_counts.X.toarray())
    assert adata.obs["label"].iloc[0] == small_counts.obs["cell_type"].iloc[0]


@pytest.mark.parametrize("name", ["m.csv", "m.tsv", "m.tsv.gz", "m.csv.gz", "m.txt"])
@pytest.mark.parametrize("transpose", [False, True])
def test_delimited_text(tmp_path, small_counts, name, transpose):
    df = small_counts.to_df().astype(int)
    if transpose:
        df = df.T
    path = tmp_path / name
    df.to_csv(path, sep="," if ".csv" in name else "\t")
    adata = read_counts(path, transpose=transpose)
    assert_contract(adata, path, "csv")
    assert list(adata.obs_names) == list(small_counts.obs_names)
    assert list(adata.var_names) == list(small_counts.var_names)
    np.testing.assert_array_equal(dense(adata), small_counts.X.toarray())


def test_10x_h5_v3_written_with_h5py(tmp_path, small_counts):
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5_v3(path, small_counts)
    reference = sc.read_10x_h5(path)  # scanpy accepts what the test writes
    np.testing.assert_array_equal(reference.X.toarray(), small_counts.X.toarray())
    assert detect_format(path) == "10x_h5"
    adata = read_counts(path)
    assert_contract(adata, path, "10x_h5")
    assert list(adata.var_names) == list(small_counts.var_names)
    np.testing.assert_array_equal(dense(adata), small_counts.X.toarray())


def test_10x_h5_v2_legacy(tmp_path, small_counts):
    path = tmp_path / "legacy.h5"
    write_10x_h5_v2(path, small_counts)
    assert detect_format(path) == "10x_h5"
    np.testing.assert_array_equal(dense(read_counts(path)), small_counts.X.toarray())


def test_10x_mtx_written(tmp_path, small_counts):
    folder = write_10x_mtx(tmp_path / "mtx", small_counts)
    adata = read_counts(folder)
    assert_contract(adata, folder, "10x_mtx")
    np.testing.assert_array_equal(dense(adata), small_counts.X.toarray())


def test_xy_h5_int_labels_and_transpose(tmp_path):
    X = np.arange(12).reshape(3, 4)
    path = write_xy_h5(tmp_path / "xy.h5", X.T, np.array([2.0, 1.0, 2.0]))
    adata = read_counts(path, transpose=True)
    np.testing.assert_array_equal(dense(adata), X)
    assert list(adata.obs["label"]) == ["2", "1", "2"]
    unlabelled = read_counts(write_xy_h5(tmp_path / "nolab.h5", X))
    assert "label" not in unlabelled.obs


def test_numeric_label_key_as_int_strings(tmp_path, small_counts):
    small_counts.obs["cluster"] = np.arange(60) % 3 + 1.0
    path = tmp_path / "a.h5ad"
    small_counts.write_h5ad(path)
    labels = read_counts(path, label_key="cluster").obs["label"]
    assert list(labels.cat.categories) == ["1", "2", "3"]


# ------------------------------------------------------------- not errors


def test_duplicate_names_made_unique_with_warning(tmp_path, small_counts):
    small_counts.var_names = ["GENE1"] * 3 + list(small_counts.var_names[3:])
    folder = write_10x_mtx(tmp_path / "dup", small_counts)
    with pytest.warns(UserWarning, match="2 duplicate gene name"):
        adata = read_counts(folder)
    assert adata.var_names.is_unique
    assert list(adata.var_names[:3]) == ["GENE1", "GENE1-1", "GENE1-2"]


def test_duplicate_cell_names_in_text(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text(",g1,g2\nc1,1,2\nc1,3,4\n")
    with pytest.warns(UserWarning, match=f"{path}: 1 duplicate cell name"):
        adata = read_counts(path)
    assert list(adata.obs_names) == ["c1", "c1-1"]


# ------------------------------------------------------------------ bad input


def h5ad_with(tmp_path: Path, X: np.ndarray) -> Path:
    path = tmp_path / "bad.h5ad"
    anndata.AnnData(X=X.astype(np.float32)).write_h5ad(path)
    return path


@pytest.mark.parametrize(
    ("transform", "problem"),
    [
        (lambda X: X / X.sum(axis=1, keepdims=True) * 1e4, "normalized or log-transformed"),
        (np.log1p, "normalized or log-transformed"),
        (lambda X: X - 5.0, "negative"),
        (lambda X: np.where(X > 3, np.nan, X), "NaN or infinite"),
        (lambda X: np.where(X > 3, np.inf, X), "NaN or infinite"),
    ],
    ids=["normalized", "log1p", "negative", "nan", "inf"],
)
def test_not_raw_counts(tmp_path, transform, problem):
    X = np.random.default_rng(1).poisson(3.0, size=(20, 10)).astype(float) + 1
    path = h5ad_with(tmp_path, transform(X))
    with pytest.raises(InputError) as err:
        read_counts(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    if problem.startswith("normalized"):
        assert "raw integer counts" in str(err.value) and "layers['counts']" in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5ad"
    with pytest.raises(InputError, match=f"{path}: input does not exist"):
        read_counts(path)


@pytest.mark.parametrize("suffix", [".h5", ".h5ad"])
def test_truncated_hdf5(tmp_path, small_counts, suffix):
    path = tmp_path / f"full{suffix}"
    if suffix == ".h5":
        write_xy_h5(path, small_counts.X.toarray(), np.ones(60))
    else:
        small_counts.write_h5ad(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_counts(path)
    assert str(path) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_unknown_format(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(",g1\nc1,1\n")
    with pytest.raises(InputError, match=f"{path}: unknown format 'parquet'"):
        read_counts(path, format="parquet")
    other = tmp_path / "m.xlsx"
    other.write_text("x")
    with pytest.raises(InputError, match=f"{other}: unknown format"):
        read_counts(other)
    h5 = tmp_path / "other.h5"
    with h5py.File(h5, "w") as f:
        f["something"] = np.ones(3)
    with pytest.raises(InputError, match=f"{h5}: unknown format.*something"):
        read_counts(h5)
    assert set(FORMATS) == {"10x_h5", "10x_mtx", "h5ad", "loom", "csv", "xy_h5"}


@pytest.mark.parametrize("missing", ["matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"])
def test_10x_folder_missing_file(tmp_path, small_counts, missing):
    folder = write_10x_mtx(tmp_path / "mtx", small_counts)
    (folder / missing).unlink()
    with pytest.raises(InputError) as err:
        read_counts(folder)
    assert str(folder) in str(err.value) and f"missing {missing}" in str(err.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (",g1,g2,g3\nc1,1,2,3\nc2,4,5\n", "fewer fields than the header"),
        (",g1,g2,g3\nc1,1,2,3\nc2,4,5,6,7\n", "more fields than the header"),
        (",g1,g2,g3\nc1,1,2,3\nc2,4,five,6\n", "non-numeric value 'five' in row 'c2'"),
    ],
    ids=["short-row", "long-row", "non-numeric"],
)
def test_bad_csv(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_counts(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_missing_label_key(tmp_path, small_counts):
    path = tmp_path / "a.h5ad"
    small_counts.write_h5ad(path)
    with pytest.raises(InputError) as err:
        read_counts(path, label_key="celltype")
    msg = str(err.value)
    assert str(path) in msg and "'celltype'" in msg and "'cell_type'" in msg


def test_empty_matrix(tmp_path):
    path = write_xy_h5(tmp_path / "empty.h5", np.zeros((0, 5)))
    with pytest.raises(InputError, match=f"{path}: the count matrix is empty"):
        read_counts(path)


def test_options_that_do_not_apply(tmp_path, small_counts):
    path = tmp_path / "a.h5ad"
    small_counts.write_h5ad(path)
    with pytest.raises(InputError, match="transpose"):
        read_counts(path, transpose=True)
    csv = tmp_path / "m.csv"
    csv.write_text(",g1\nc1,1\n")
    with pytest.raises(InputError, match="layer"):
        read_counts(csv, layer="counts")


@pytest.mark.parametrize("n_labels", [59, 61])
def test_xy_h5_labels_of_another_length(tmp_path, small_counts, n_labels):
    path = write_xy_h5(tmp_path / "xy.h5", small_counts.X.toarray(), np.ones(n_labels))
    with pytest.raises(InputError) as err:
        read_counts(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: dataset 'Y' has {n_labels} labels for 60 cells")
    assert "one label per cell" in msg and "delete Y" in msg


@pytest.mark.parametrize(
    "labels",
    [np.array([b"B", b"T", b"B"]), np.array([1.0, 2.5, 1.0])],
    ids=["strings", "fractions"],
)
def test_xy_h5_labels_that_are_not_integer_codes(tmp_path, labels):
    path = write_xy_h5(tmp_path / "xy.h5", np.ones((3, 4)), labels)
    with pytest.raises(
        InputError, match=f"^{path}: dataset 'Y' must hold integer cell-type labels"
    ):
        read_counts(path)


@pytest.mark.parametrize("name", ["garbage.h5ad", "garbage.h5", "garbage.loom"])
def test_corrupt_file_that_is_not_hdf5(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError) as err:
        read_counts(path)
    assert str(path) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_10x_folder_with_truncated_matrix(tmp_path, small_counts):
    folder = write_10x_mtx(tmp_path / "mtx", small_counts)
    data = (folder / "matrix.mtx.gz").read_bytes()
    (folder / "matrix.mtx.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_counts(folder)
    assert str(folder) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_text_names_are_read_as_written(tmp_path):
    # pandas alone would read the cell "NA" as NaN, "001" as 1.0 and rename "g1" to "g1.1".
    path = tmp_path / "names.csv"
    path.write_text(",001,g1,g1\n001,1,2,3\nNA,4,5,6\n1e3,7,8,9\n")
    with pytest.warns(UserWarning, match="1 duplicate gene name"):
        adata = read_counts(path)
    assert list(adata.obs_names) == ["001", "NA", "1e3"]
    assert list(adata.var_names) == ["001", "g1", "g1-1"]


def test_text_without_a_field_above_the_row_names(tmp_path):
    # R's write.table(sep="\t") writes no field above the row names.
    path = tmp_path / "r.tsv"
    path.write_text("g1\tg2\nc1\t1\t2\nc2\t3\t4\n")
    adata = read_counts(path)
    assert list(adata.var_names) == ["g1", "g2"] and list(adata.obs_names) == ["c1", "c2"]
    np.testing.assert_array_equal(dense(adata), [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        (",g1,g2\n", "a header row but no data rows"),
        (",g1,g2,g3,g4\nc1,1,2\nc2,3,4\n", "the header has 5 fields but the rows have 3"),
        (",g1,g2\nc1,1,NA\n", "non-numeric value 'NA' in row 'c1', column 'g2'"),
    ],
    ids=["empty", "header-only", "header-too-long", "NA-count"],
)
def test_more_bad_text(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=f"^{path}: .*{problem}"):
        read_counts(path)


# ------------------------------------------------------------- reader properties

# Names as cells and genes are named, avoiding none of the strings pandas reads as NaN.
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,6}", fullmatch=True)
count_tables = st.integers(1, 6).flatmap(
    lambda n_cells: st.integers(1, 6).flatmap(
        lambda n_genes: st.tuples(
            hnp.arrays(np.int64, (n_cells, n_genes), elements=st.integers(0, 50)),
            st.lists(names, min_size=n_cells, max_size=n_cells, unique=True),
            st.lists(names, min_size=n_genes, max_size=n_genes, unique=True),
        )
    )
)


@settings(max_examples=40, deadline=None)
@given(table=count_tables, suffix=st.sampled_from([".csv", ".tsv", ".txt", ".csv.gz"]))
def test_text_reader_round_trips_any_count_table(table, suffix):
    X, cells, genes = table
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"m{suffix}"
        pd.DataFrame(X, index=cells, columns=genes).to_csv(
            path, sep="," if ".csv" in suffix else "\t"
        )
        adata = read_counts(path)
    assert list(adata.obs_names) == cells and list(adata.var_names) == genes
    np.testing.assert_array_equal(dense(adata), X)
    assert_contract(adata, path, "csv")


@settings(max_examples=40, deadline=None)
@given(table=count_tables, data=st.data())
def test_text_reader_names_the_bad_cell(table, data):
    X, cells, genes = table
    df = pd.DataFrame(X, index=cells, columns=genes).astype(object)
    i = data.draw(st.integers(0, len(cells) - 1))
    j = data.draw(st.integers(0, len(genes) - 1))
    df.iloc[i, j] = data.draw(st.sampled_from(["x", "1,5", "n/a", "?"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tsv"
        df.to_csv(path, sep="\t")
        with pytest.raises(InputError) as err:
            read_counts(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: non-numeric value")
    assert f"row {cells[i]!r}" in msg


@settings(max_examples=40, deadline=None)
@given(
    X=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
        elements=st.integers(0, 1000).map(float),
    ),
    transpose=st.booleans(),
    labelled=st.booleans(),
)
def test_xy_reader_round_trips_any_count_matrix(X, transpose, labelled):
    n_cells = X.shape[1] if transpose else X.shape[0]
    y = np.arange(n_cells) % 3 + 1 if labelled else None
    with tempfile.TemporaryDirectory() as tmp:
        path = write_xy_h5(Path(tmp) / "xy.h5", X, y)
        adata = read_counts(path, transpose=transpose)
    np.testing.assert_array_equal(dense(adata), X.T if transpose else X)
    assert_contract(adata, path, "xy_h5")
    if labelled:
        assert list(adata.obs["label"]) == [str(v) for v in y]
    else:
        assert "label" not in adata.obs


def test_counts_that_went_through_float32_are_read_rounded(tmp_path):
    X = np.array([[1, 2.0000002, 0], [3, 20_000_000, 5.0000005]], dtype=np.float32)
    obs, var = pd.DataFrame(index=["c1", "c2"]), pd.DataFrame(index=["g1", "g2", "g3"])
    path = tmp_path / "floaty.h5ad"
    anndata.AnnData(X=X, obs=obs, var=var).write_h5ad(path)
    with pytest.warns(UserWarning) as record:
        adata = read_counts(path)
    messages = [str(w.message) for w in record]
    assert messages[0].startswith(f"{path}: rounded 2 value(s)")
    assert messages[1].startswith(f"{path}: 1 count(s) above 10,000,000")
    assert "the largest 20,000,000 in cell 'c2', gene 'g2'" in messages[1]
    want = [[1, 2, 0], [3, 20_000_000, 5]]
    np.testing.assert_array_equal(dense(adata), want)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), want)
