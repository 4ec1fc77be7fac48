"""Raw-count checks: integer counts pass, any bad value fails with the file named."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import sparse

from scvae.data.checks import check_counts, check_counts_chunked
from scvae.data.ondisk import H5CSR
from scvae.errors import InputError

int_matrices = hnp.arrays(
    dtype=st.sampled_from([np.int32, np.int64, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements=st.integers(min_value=0, max_value=10_000),
)


@settings(max_examples=60, deadline=None)
@given(X=int_matrices, as_sparse=st.booleans())
def test_check_counts_accepts_integer_counts(X, as_sparse):
    check_counts(sparse.csr_matrix(X) if as_sparse else X, source="m")


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
