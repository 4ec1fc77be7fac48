"""h5ad files between stages: atomic writes, backed reads that leave the counts on disk."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import anndata
import pytest
from scipy import sparse

from scvae.data.h5ad import plain_dicts, read_h5ad, write_h5ad
from scvae.errors import InputError


def test_write_h5ad_atomic(tmp_path, small_counts, monkeypatch):
    path = tmp_path / "out" / "a.h5ad"
    write_h5ad(small_counts, path)
    assert anndata.read_h5ad(path).shape == small_counts.shape

    def fail(self, filename, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", fail)
    with pytest.raises(RuntimeError):
        write_h5ad(small_counts, tmp_path / "out" / "b.h5ad")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.h5ad"]


def test_backed_read_and_write_keep_the_counts(tmp_path, small_counts, monkeypatch):
    path = tmp_path / "a.h5ad"
    small_counts.write_h5ad(path)
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")  # every file counts as large
    backed = read_h5ad(path, backed=None)
    assert backed.isbacked and not sparse.issparse(backed.layers["counts"])
    backed.obs["seen"] = 1
    backed.uns["note"] = OrderedDict(a=1)
    write_h5ad(backed, tmp_path / "b.h5ad")
    back = anndata.read_h5ad(tmp_path / "b.h5ad")
    assert (back.X != small_counts.X).nnz == 0
    assert (back.layers["counts"] != small_counts.layers["counts"]).nnz == 0
    assert (back.obs["seen"] == 1).all() and back.uns["note"]["a"] == 1
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "inf")
    assert not read_h5ad(path, backed=None).isbacked


def test_plain_dicts_converts_nested_mappings():
    value = OrderedDict(a=OrderedDict(b=1), c=[1])
    assert plain_dicts(value) == {"a": {"b": 1}, "c": [1]}
    assert type(plain_dicts(value)["a"]) is dict


def test_missing_or_corrupt_h5ad(tmp_path):
    with pytest.raises(InputError, match="input does not exist"):
        read_h5ad(tmp_path / "nope.h5ad")
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_h5ad(bad)


def test_counts_equal_to_x_are_stored_once(tmp_path, small_counts):
    import h5py

    a = small_counts.copy()
    a.layers["counts"] = a.X.copy()
    write_h5ad(a, tmp_path / "once.h5ad")
    a.write_h5ad(tmp_path / "twice.h5ad")
    with h5py.File(tmp_path / "once.h5ad") as f:
        assert f["layers/counts/data"].id == f["X/data"].id  # one dataset, two names
    assert (tmp_path / "once.h5ad").stat().st_size < (tmp_path / "twice.h5ad").stat().st_size
    back = anndata.read_h5ad(tmp_path / "once.h5ad")
    assert (back.layers["counts"] != a.X).nnz == 0 and (back.X != a.X).nnz == 0
    assert "counts" in a.layers  # the caller's object is left as it was
    # Different values: two datasets.
    a.layers["counts"] = a.X * 2
    write_h5ad(a, tmp_path / "two.h5ad")
    assert (anndata.read_h5ad(tmp_path / "two.h5ad").layers["counts"] != a.X * 2).nnz == 0
