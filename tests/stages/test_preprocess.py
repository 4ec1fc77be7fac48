"""The preprocess stage: file to file, in memory or streamed by size."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

import scvae.stages.preprocess
from scvae.errors import InputError
from scvae.stages.preprocess import run_preprocess


def test_run_preprocess_end_to_end(small_counts, tmp_path):
    src = tmp_path / "in.h5ad"
    small_counts.write_h5ad(src)
    out, png = tmp_path / "res" / "pre.h5ad", tmp_path / "res" / "qc.png"
    run_preprocess(str(src), str(out), str(png), label_key="cell_type", max_mito_fraction=0.9)
    adata = anndata.read_h5ad(out)
    assert adata.uns["scvae"]["input"]["format"] == "h5ad"
    assert adata.uns["scvae"]["preprocess"]["settings"]["max_mito_fraction"] == 0.9
    assert "label" in adata.obs and "counts" in adata.layers
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pre.h5ad", "qc.png"]
    with pytest.raises(InputError, match="unknown preprocessing setting.*min_gene\\b"):
        run_preprocess(str(src), str(out), str(png), min_gene=3)


def test_large_csr_h5ad_is_streamed_and_others_read_in_memory(small_counts, tmp_path, monkeypatch):
    streamed = []
    monkeypatch.setattr(
        scvae.stages.preprocess, "preprocess_h5ad_backed", lambda *a, **k: streamed.append(a[0])
    )
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")  # every file counts as large
    small_counts.write_h5ad(tmp_path / "csr.h5ad")
    run_preprocess(tmp_path / "csr.h5ad", tmp_path / "c.h5ad", tmp_path / "c.png")
    assert streamed == [tmp_path / "csr.h5ad"]
    small_counts.X = small_counts.X.toarray()  # dense counts cannot be streamed
    small_counts.write_h5ad(tmp_path / "dense.h5ad")
    run_preprocess(tmp_path / "dense.h5ad", tmp_path / "d.h5ad", tmp_path / "d.png")
    assert len(streamed) == 1 and anndata.read_h5ad(tmp_path / "d.h5ad").n_obs > 0


def test_run_preprocess_with_samples(small_counts, tmp_path):
    small_counts.obs["donor"] = np.tile(["d1", "d2"], 30)
    paths = {}
    for name, rows in (("s1", slice(0, 30)), ("s2", slice(30, 60))):
        paths[name] = tmp_path / f"{name}.h5ad"
        small_counts[rows].copy().write_h5ad(paths[name])
    out, png = tmp_path / "pre.h5ad", tmp_path / "qc.png"
    with pytest.warns(UserWarning, match="fewer than one minibatch"):
        run_preprocess(None, out, png, samples=paths, covariates=["donor"], label_key="cell_type")
    adata = anndata.read_h5ad(out)
    assert adata.obs["batch"].value_counts().to_dict() == {"s1": 30, "s2": 30}
    record = adata.uns["scvae"]["preprocess"]
    assert record["batch_key"] == "batch" and list(record["covariate_keys"]) == ["donor"]
    assert set(adata.uns["scvae"]["input"]["samples"]) == {"s1", "s2"}
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_large_sample_files_are_an_error(small_counts, tmp_path, monkeypatch):
    small_counts.write_h5ad(tmp_path / "a.h5ad")
    small_counts.write_h5ad(tmp_path / "b.h5ad")
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")
    with pytest.raises(InputError, match=r"samples: 'a' .*streamed .*batch_key: batch"):
        run_preprocess(
            None, tmp_path / "o.h5ad", tmp_path / "o.png", samples={"a": tmp_path / "a.h5ad"}
        )
    assert not (tmp_path / "o.h5ad").exists()


def test_a_large_file_streams_with_its_batches(small_counts, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        scvae.stages.preprocess, "preprocess_h5ad_backed", lambda *a, **k: calls.append(k)
    )
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")
    small_counts.write_h5ad(tmp_path / "in.h5ad")
    run_preprocess(
        tmp_path / "in.h5ad",
        tmp_path / "o.h5ad",
        tmp_path / "o.png",
        batch_key="cell_type",
        covariates=["donor"],
    )
    assert calls[0]["batch_key"] == "cell_type" and calls[0]["covariates"] == ["donor"]
