"""Raw-count checks: integer counts pass, any bad value fails with the file named."""

from __future__ import annotations

import re
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import sparse

from scvae.data.checks import ChunkedCountCheck, check_counts, check_counts_chunked
from scvae.data.loaders import CountBatches
from scvae.data.ondisk import H5CSR, is_ondisk, row_sums, take_rows
from scvae.errors import InputError

int_matrices = hnp.arrays(
    dtype=st.sampled_from([np.int32, np.int64, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements=st.integers(min_value=0, max_value=10_000),
)


@settings(max_examples=60, deadline=None)
@given(X=int_matrices, as_sparse=st.booleans())
def test_check_counts_accepts_integer_counts(X, as_sparse):
    M = sparse.csr_matrix(X) if as_sparse else X
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to round, nothing to warn about
        assert check_counts(M, source="m") is M


@settings(max_examples=60, deadline=None)
@given(
    X=int_matrices,
    data=st.data(),
    bad=st.one_of(
        st.floats(min_value=0.01, max_value=0.99).map(lambda v: ("frac", v)),
        st.integers(min_value=1, max_value=100).map(lambda v: ("neg", -v)),
        st.sampled_from([np.nan, np.inf, -np.inf]).map(lambda v: ("nonfinite", v)),
    ),
    as_sparse=st.booleans(),
)
def test_check_counts_rejects_one_bad_entry(X, data, bad, as_sparse):
    kind, value = bad
    X = X.astype(np.float64)
    i = data.draw(st.integers(0, X.shape[0] - 1))
    j = data.draw(st.integers(0, X.shape[1] - 1))
    X[i, j] = X[i, j] + value if kind == "frac" else value
    M = sparse.csr_matrix(X) if as_sparse else X
    expected = {"frac": "non-integer", "neg": "negative", "nonfinite": "NaN or infinite"}[kind]
    with pytest.raises(InputError, match=f"^source.h5ad: .*{expected}"):
        check_counts(M, source="source.h5ad")


def test_check_counts_chunked_names_the_rows_of_a_bad_value_on_disk(tmp_path):
    X = sparse.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3))
    X.data[-1] = 0.5
    anndata.AnnData(X=X).write_h5ad(tmp_path / "a.h5ad")
    check_counts_chunked(X[:3], source="a")  # in memory: checked whole
    on_disk = H5CSR.open(tmp_path / "a.h5ad")
    try:
        with pytest.raises(InputError, match=r"^a \(rows 0-3\): .*non-integer"):
            check_counts_chunked(on_disk, source="a")
    finally:
        on_disk.close()


# ------------------------------------------------------- counts that went through floats

CELLS, GENES = ["c0", "c1", "c2"], ["g0", "g1", "g2"]


def _formats(X: np.ndarray) -> list:
    return [
        X,
        np.asfortranarray(X),
        sparse.csr_matrix(X),
        sparse.csc_matrix(X),
        sparse.coo_matrix(X),
        sparse.lil_matrix(X),
    ]


def _dense(M) -> np.ndarray:
    return M.toarray() if sparse.issparse(M) else np.asarray(M)


@pytest.mark.parametrize("fmt", range(6), ids=["C", "F", "csr", "csc", "coo", "lil"])
def test_values_within_float32_rounding_are_rounded_with_one_warning(fmt):
    # A float32 round trip leaves a count one step (1.2e-7 relative) off; -1e-9 is a zero.
    X = np.array([[1, 2.0000002, 0], [3, 0, 5.0000005], [0, 7, -1e-9]], dtype=np.float32)
    assert X[0, 1] != 2 and X[1, 2] != 5
    M = _formats(X)[fmt]
    with pytest.warns(UserWarning) as record:
        out = check_counts(M, source="m")
    assert [str(w.message) for w in record] == [
        "m: rounded 3 value(s) that were within float rounding of an integer (relative "
        "difference up to 1e-06, for example 2.0000002); the counts went through floating "
        "point (a float32 export, or scaled and scaled back)."
    ]
    want = np.array([[1, 2, 0], [3, 0, 5], [0, 7, 0]], dtype=np.float32)
    np.testing.assert_array_equal(_dense(out), want)
    assert not np.signbit(_dense(out)).any()  # no -0.0 left by the rounding
    if sparse.issparse(out):
        assert out.nnz == 5  # the value rounded to 0 is no longer stored
    np.testing.assert_array_equal(_dense(M), X)  # the caller's matrix is left as it was


def test_copy_false_rounds_in_place():
    X = sparse.csr_matrix(np.array([[2.0000002, 1]], dtype=np.float32))
    with pytest.warns(UserWarning, match="^m: rounded 1 value"):
        assert check_counts(X, source="m", copy=False) is X
    assert X.data.tolist() == [2.0, 1.0]
    dense = np.array([[2.0000002, 1]], dtype=np.float32)
    dense.flags.writeable = False  # read-only: rounded in a copy instead
    with pytest.warns(UserWarning, match="^m: rounded 1 value"):
        out = check_counts(dense, source="m", copy=False)
    assert out is not dense and out.tolist() == [[2.0, 1.0]] and dense[0, 0] != 2


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [
        (2.3, np.float64, "2.3"),
        (2.3, np.float32, "2.3"),
        (2.0001, np.float32, "2.0001"),
        (2.00001, np.float64, "2.00001"),
        (np.log(4), np.float32, "1.3862944"),
    ],
)
def test_a_non_integer_value_is_shown_with_the_digits_that_tell_it_apart(value, dtype, shown):
    X = np.array([[1, 0, 0], [0, 0, value]], dtype=dtype)
    match = (
        rf"^m: the count matrix holds 1 non-integer value\(s\) \(for example "
        rf"{re.escape(shown)} in cell 'c1', gene 'g2'\), so it looks normalized"
    )
    with pytest.raises(InputError, match=match):
        check_counts(X, source="m", obs_names=CELLS[:2], var_names=GENES)
    with pytest.raises(InputError, match=rf"{re.escape(shown)} in row 1, column 2\)"):
        check_counts(sparse.csc_matrix(X), source="m")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1000.0005, None),  # 5e-7 relative: rounded
        (1000.002, "non-integer"),  # 2e-6 relative
        (4e-7, None),  # below 1, the tolerance is absolute
        (2e-6, "non-integer"),
        (-4e-7, None),  # a zero that went through floating point
        (-2e-6, "negative"),
    ],
)
def test_the_tolerance_is_relative_to_the_integer(value, problem):
    X = np.array([[value, 1.0]])
    if problem is None:
        with pytest.warns(UserWarning, match="^m: rounded 1 value"):
            assert check_counts(X, source="m")[0, 0] == round(value)
    else:
        with pytest.raises(InputError, match=f"^m: .*{problem}"):
            check_counts(X, source="m")


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
@pytest.mark.parametrize("fmt", range(6), ids=["C", "F", "csr", "csc", "coo", "lil"])
def test_a_count_above_ten_million_warns_naming_cell_and_gene(dtype, fmt):
    X = np.zeros((3, 3), dtype=dtype)
    X[0, 0], X[1, 2], X[2, 1] = 3, 20_000_000, 12_000_000
    M = _formats(X)[fmt]
    with pytest.warns(UserWarning) as record:
        out = check_counts(M, source="m", obs_names=pd.Index(CELLS), var_names=GENES)
    assert len(record) == 1
    assert str(record[0].message).startswith(
        "m: 2 count(s) above 10,000,000, the largest 20,000,000 in cell 'c1', gene 'g2'. "
    )
    np.testing.assert_array_equal(_dense(out), X)  # a warning, nothing changed
    with pytest.warns(UserWarning, match=r"the largest 20,000,000 in row 1, column 2\. "):
        check_counts(M, source="m")


def test_chunked_check_names_rows_of_the_whole_matrix_and_warns_once():
    check = ChunkedCountCheck("big.h5ad", obs_names=["c0", "c1", "c2", "c3"], var_names=GENES)
    first = sparse.csr_matrix(np.array([[2.0000002, 1, 0], [0, 3, 0]], dtype=np.float32))
    second = sparse.csr_matrix(np.array([[1, 0, 0], [4.0000005, 3e7, 0]], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per chunk
        assert check.chunk(first, np.arange(0, 2)) is first
        assert check.chunk(second, np.arange(2, 4)) is second
    assert first.data.tolist() == [2, 1, 3] and second.data.tolist() == [1, 4, 3e7]
    with pytest.warns(UserWarning) as record:
        assert check.finish()
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith("big.h5ad: rounded 2 value(s)")
    assert (
        "1 count(s) above 10,000,000, the largest 30,000,000 in cell 'c3', gene 'g1'"
        in (messages[1])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check.finish()  # once only
    bad = sparse.csr_matrix(np.array([[0, 0.5, 0]]))
    with pytest.raises(InputError, match=r"^big.h5ad \(rows 4-4\): .*0\.5 in cell 'c4'"):
        ChunkedCountCheck("big.h5ad", obs_names=[f"c{i}" for i in range(5)]).chunk(
            bad, np.array([4])
        )


def test_counts_on_disk_are_rounded_as_training_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    want = rng.poisson(3.0, size=(40, 5)).astype(np.float32)
    # Every count one float32 step above its integer, as a float32 round trip leaves it.
    nudged = np.where(want > 0, np.nextafter(want, np.float32(np.inf)), want)
    anndata.AnnData(X=sparse.csr_matrix(nudged)).write_h5ad(tmp_path / "a.h5ad")
    on_disk = H5CSR.open(tmp_path / "a.h5ad")
    try:
        n = int((want > 0).sum())
        with pytest.warns(UserWarning, match=rf"^a: rounded {n} value\(s\)"):
            counts = check_counts_chunked(on_disk, source="a")
        assert is_ondisk(counts) and counts.shape == on_disk.shape and counts.nnz == on_disk.nnz
        # The minibatches of training (block shuffle, as for counts on disk), row subsets
        # and row sums all read integers; the file keeps its values.
        loader = CountBatches(counts, np.arange(40), 16, shuffle=True, block_size=4)
        batches = torch.cat([x for x, _ in loader.epoch(0)])
        np.testing.assert_array_equal(batches.numpy(), want[np.concatenate(loader.batches(0))])
        np.testing.assert_array_equal(
            take_rows(counts, np.array([7, 3]))[0:2].toarray(), want[[7, 3]]
        )
        np.testing.assert_array_equal(row_sums(counts), want.sum(1))
        np.testing.assert_array_equal(on_disk[0:40].toarray(), nudged)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_counts_chunked(counts, source="a") is counts  # now integers
    finally:
        on_disk.close()
