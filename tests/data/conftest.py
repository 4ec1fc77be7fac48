"""Fixtures of the data tests."""

from __future__ import annotations

import pytest

from scvae.data.synthetic import synthetic_counts


@pytest.fixture
def h5_counts(tmp_path):
    """700 synthetic cells x 25 genes in an h5ad file (X and layers["counts"]): (path, AnnData)."""
    a = synthetic_counts(700, 25, seed=2)
    a.layers["counts"] = a.X.copy()
    a.write_h5ad(tmp_path / "c.h5ad")
    return tmp_path / "c.h5ad", a
