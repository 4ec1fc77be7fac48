"""Batches and covariates: a batch column, one file per sample, and their bad-input errors."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest

from scvae.data.batches import (
    batch_column,
    check_covariate_keys,
    concat_samples,
    read_dataset,
    read_samples,
)
from scvae.data.readers import read_counts
from scvae.errors import InputError

KANG = "kang_ifnb_2conditions_counts.h5ad"
CELLBENCH = "cellbench_5batches_counts.h5ad"


@pytest.fixture(scope="module")
def kang_split(shared_data, tmp_path_factory):
    """Kang's two conditions as two h5ad files, one per sample."""
    folder = tmp_path_factory.mktemp("kang_split")
    source = anndata.read_h5ad(shared_data / KANG)
    paths = {}
    for condition in ("control", "stimulated"):
        paths[condition] = folder / f"{condition}.h5ad"
        source[source.obs["condition"] == condition].copy().write_h5ad(paths[condition])
    return paths


def _samples(tmp_path, small_counts, genes_per_sample):
    """One h5ad per sample of ``small_counts``'s cells, with the given gene columns."""
    paths = {}
    for i, (name, genes) in enumerate(genes_per_sample.items()):
        part = small_counts[i * 20 : (i + 1) * 20, genes].copy()
        paths[name] = tmp_path / f"{name}.h5ad"
        part.write_h5ad(paths[name])
    return paths


# ------------------------------------------------------------------ one file, batch_key


@pytest.mark.parametrize(
    ("name", "batch_key", "label_key", "sizes"),
    [
        (
            CELLBENCH,
            "batch",
            "cell_line",
            {
                "sc_celseq2": 274,
                "sc_celseq2_5cl_p1": 297,
                "sc_celseq2_5cl_p2": 307,
                "sc_celseq2_5cl_p3": 305,
                "sc_dropseq": 225,
            },
        ),
        (KANG, "condition", "cell_type", {"control": 936, "stimulated": 1039}),
    ],
)
def test_batch_key_on_the_shared_files(shared_data, name, batch_key, label_key, sizes):
    adata = read_dataset(shared_data / name, batch_key=batch_key, label_key=label_key)
    batch = adata.obs["batch"]
    assert isinstance(batch.dtype, pd.CategoricalDtype)
    assert list(batch.cat.categories) == sorted(sizes)
    assert batch.value_counts().to_dict() == sizes
    assert all(isinstance(c, str) for c in batch.cat.categories)
    # The original column is kept, with the same values.
    assert (adata.obs[batch_key].astype(str).to_numpy() == batch.astype(str).to_numpy()).all()
    assert adata.uns["scvae"]["input"]["batch_key"] == batch_key
    assert "label" in adata.obs and "counts" in adata.layers


def test_numeric_batches_and_covariates_become_strings(tmp_path, small_counts):
    small_counts.obs["plate"] = np.repeat([1.0, 2.0, 3.0], 20)
    small_counts.obs["donor"] = np.tile([7, 8], 30)
    small_counts.write_h5ad(tmp_path / "in.h5ad")
    adata = read_dataset(tmp_path / "in.h5ad", batch_key="plate", covariates=["donor"])
    assert list(adata.obs["batch"].cat.categories) == ["1", "2", "3"]
    assert list(adata.obs["donor"].cat.categories) == ["7", "8"]
    assert adata.obs["plate"].dtype == float  # the source column is kept as it was


def test_missing_batch_column_lists_the_columns(tmp_path, small_counts):
    small_counts.write_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(InputError, match=r"in\.h5ad: batch_key 'plate' .*columns: 'cell_type'"):
        read_dataset(tmp_path / "in.h5ad", batch_key="plate")
    with pytest.raises(InputError, match=r"in\.h5ad: covariate 'donor' .*columns: 'cell_type'"):
        read_dataset(tmp_path / "in.h5ad", covariates=["donor"])


@pytest.mark.parametrize("empty", [np.nan, None, "", "  "])
def test_missing_batch_values_give_their_count_and_a_cell(empty):
    obs = pd.DataFrame(
        {"plate": np.array(["a", empty, "b", empty], dtype=object)},
        index=["c0", "c1", "c2", "c3"],
    )
    with pytest.raises(InputError, match=r"x\.h5ad: batch_key 'plate': 2 of 4 cells .*cell 'c1'"):
        batch_column(obs, "plate", "x.h5ad")


def test_nan_in_a_numeric_batch_column(tmp_path, small_counts):
    small_counts.obs["plate"] = np.where(np.arange(60) == 7, np.nan, 1.0)
    small_counts.write_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(InputError, match=r"1 of 60 cells have no value .*'cell7'"):
        read_dataset(tmp_path / "in.h5ad", batch_key="plate")


def test_an_existing_batch_column_is_replaced_with_a_warning(tmp_path, small_counts):
    small_counts.obs["batch"] = "old"
    small_counts.obs["plate"] = np.repeat(["p1", "p2"], 30)
    small_counts.write_h5ad(tmp_path / "in.h5ad")
    with pytest.warns(UserWarning, match="'batch' is replaced by the batches of batch_key 'plate'"):
        adata = read_dataset(tmp_path / "in.h5ad", batch_key="plate")
    assert list(adata.obs["batch"].cat.categories) == ["p1", "p2"]


def test_a_single_batch_warns(tmp_path, small_counts):
    small_counts.obs["plate"] = "p1"
    small_counts.write_h5ad(tmp_path / "in.h5ad")
    with pytest.warns(UserWarning, match="single batch"):
        read_dataset(tmp_path / "in.h5ad", batch_key="plate")


@pytest.mark.parametrize(
    ("covariates", "batch_key", "match"),
    [
        (["batch"], None, "'batch' is the batch column"),
        (["plate"], "plate", "'plate' is the batch column"),
        (["donor", "donor"], None, "'donor' given more than once"),
        ([""], None, "not an obs column name"),
    ],
)
def test_bad_covariate_names(covariates, batch_key, match):
    with pytest.raises(InputError, match=match):
        check_covariate_keys(covariates, batch_key)


def test_one_covariate_name_is_not_split_into_letters():
    assert check_covariate_keys("donor") == ["donor"]


# ------------------------------------------------------------------ one file per sample


def test_samples_equal_the_single_file_read(shared_data, kang_split):
    single = read_dataset(shared_data / KANG, batch_key="condition", label_key="cell_type")
    split = read_dataset(samples=kang_split, label_key="cell_type")
    # Cells are named <sample>_<barcode>; the same cells, in the file order.
    expected = [
        f"{c}_{cell}" for c, cell in zip(single.obs["condition"], single.obs_names, strict=True)
    ]
    order = pd.Index(split.obs_names).get_indexer(expected)
    assert (order >= 0).all() and split.n_obs == single.n_obs
    split = split[order]
    assert list(split.var_names) == list(single.var_names)
    assert (split.X != single.X).nnz == 0
    assert (split.layers["counts"] != single.layers["counts"]).nnz == 0
    assert split.layers["counts"] is not split.X
    np.testing.assert_array_equal(split.obs["batch"].to_numpy(), single.obs["batch"].to_numpy())
    assert list(split.obs["batch"].cat.categories) == ["control", "stimulated"]
    np.testing.assert_array_equal(split.obs["label"].to_numpy(), single.obs["label"].to_numpy())
    source = split.uns["scvae"]["input"]
    assert source["samples"]["control"] == {"path": str(kang_split["control"]), "format": "h5ad"}
    assert source["format"] == "h5ad" and "control=" in source["path"]


def test_samples_of_different_formats(tmp_path, small_counts):
    from scipy import io as sio

    small_counts[:30].copy().write_h5ad(tmp_path / "a.h5ad")
    b = small_counts[30:]
    folder = tmp_path / "b_10x"
    folder.mkdir()
    sio.mmwrite(folder / "matrix.mtx", b.X.T.astype(np.int64).tocoo())
    pd.DataFrame({"id": b.var_names, "name": b.var_names}).to_csv(
        folder / "genes.tsv", sep="\t", header=False, index=False
    )
    pd.Series(b.obs_names).to_csv(folder / "barcodes.tsv", header=False, index=False)
    adata = read_samples({"a": tmp_path / "a.h5ad", "b": folder})
    assert adata.n_obs == 60 and adata.obs["batch"].value_counts().to_dict() == {"a": 30, "b": 30}
    assert adata.uns["scvae"]["input"]["format"] == "10x_mtx, h5ad"
    assert (adata.X != small_counts.X).nnz == 0


def test_samples_with_different_genes_keep_the_shared_ones_with_a_warning(tmp_path, small_counts):
    genes = list(small_counts.var_names)
    paths = _samples(tmp_path, small_counts, {"a": genes[:35], "b": genes[5:], "c": genes})
    with pytest.warns(
        UserWarning, match=r"a \(.*a\.h5ad\): 35, b \(.*\): 35, c \(.*\): 40.*the 30 genes"
    ):
        adata = read_samples(paths)
    assert list(adata.var_names) == genes[5:35]
    assert adata.n_obs == 60
    expected = small_counts[:, genes[5:35]].X
    assert (adata.X != expected).nnz == 0


def test_samples_with_the_genes_in_another_order_are_matched_by_name(tmp_path, small_counts):
    genes = list(small_counts.var_names)
    paths = _samples(tmp_path, small_counts, {"a": genes, "b": genes[::-1]})
    adata = read_samples(paths)
    assert list(adata.var_names) == genes
    assert (adata.X != small_counts[:40].X).nnz == 0


def test_samples_that_share_no_gene(tmp_path, small_counts):
    genes = list(small_counts.var_names)
    paths = _samples(tmp_path, small_counts, {"a": genes[:20], "b": genes[20:]})
    with pytest.raises(
        InputError, match=r"share no gene name .*a \(.*a\.h5ad\): 20, b \(.*b\.h5ad\): 20"
    ):
        read_samples(paths)


def test_cell_names_are_prefixed_and_unique(tmp_path, small_counts):
    # The same barcodes in both samples, as two 10x runs have.
    paths = {}
    for name in ("s1", "s2"):
        paths[name] = tmp_path / f"{name}.h5ad"
        small_counts.write_h5ad(paths[name])
    adata = read_samples(paths)
    assert adata.obs_names.is_unique and adata.obs_names[0] == "s1_cell0"
    assert adata.obs_names[60] == "s2_cell0"


def test_samples_covariates_and_labels_are_checked_per_file(tmp_path, small_counts):
    genes = list(small_counts.var_names)
    paths = _samples(tmp_path, small_counts, {"a": genes, "b": genes})
    with pytest.raises(InputError, match=r"a\.h5ad: covariate 'donor' is not an obs column"):
        read_samples(paths, covariates=["donor"])
    with pytest.raises(InputError, match=r"a\.h5ad: label_key 'type'"):
        read_samples(paths, label_key="type")
    adata = read_samples(paths, covariates=["cell_type"], label_key="cell_type")
    assert isinstance(adata.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert isinstance(adata.obs["label"].dtype, pd.CategoricalDtype)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p: {}, "no files given"),
        (lambda p: {"a b": p["a"]}, "sample name 'a b'"),
        (lambda p: {"a=b": p["a"]}, "sample name 'a=b'"),
        (lambda p: {"a": p["a"], "b": p["a"]}, "'a' and 'b' name the same file"),
        (lambda p: {"a": p["a"], "b": p["b"].with_suffix(".h5")}, "input does not exist"),
    ],
)
def test_bad_samples(tmp_path, small_counts, mutate, match):
    genes = list(small_counts.var_names)
    paths = _samples(tmp_path, small_counts, {"a": genes, "b": genes})
    with pytest.raises(InputError, match=match):
        read_samples(mutate(paths))


def test_path_and_samples_exclude_each_other(tmp_path, small_counts):
    small_counts.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(InputError, match="either one input file or samples"):
        read_dataset(tmp_path / "a.h5ad", samples={"a": tmp_path / "a.h5ad"})
    with pytest.raises(InputError, match="either one input file or samples"):
        read_dataset()
    with pytest.raises(InputError, match="cannot be combined with samples"):
        read_dataset(samples={"a": tmp_path / "a.h5ad"}, batch_key="plate")


def test_concat_samples_in_memory(small_counts):
    a = read_counts_like(small_counts[:25])
    b = read_counts_like(small_counts[25:])
    adata = concat_samples({"x": a, "y": b})
    assert list(adata.obs["batch"].cat.categories) == ["x", "y"]
    assert adata.obs["batch"].value_counts().to_dict() == {"x": 25, "y": 35}
    assert adata.uns["scvae"]["input"]["samples"]["x"]["path"] == "x"


def read_counts_like(adata: anndata.AnnData) -> anndata.AnnData:
    """``adata`` in read_counts' layout (counts layer, uns input record)."""
    out = adata.copy()
    out.layers["counts"] = out.X.copy()
    out.uns["scvae"] = {"input": {"path": "memory", "format": "h5ad"}}
    return out


def test_read_counts_is_unchanged_without_batches(tmp_path, small_counts):
    small_counts.write_h5ad(tmp_path / "a.h5ad")
    assert "batch" not in read_counts(tmp_path / "a.h5ad").obs
    assert "batch" not in read_dataset(tmp_path / "a.h5ad").obs
