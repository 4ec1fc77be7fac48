"""The preprocess stage: file to file, in memory or streamed by size."""

from __future__ import annotations

import anndata
import pytest

import scvae.preprocess.run
from scvae.errors import InputError
from scvae.preprocess.run import run_preprocess


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
        scvae.preprocess.run, "preprocess_h5ad_backed", lambda *a, **k: streamed.append(a[0])
    )
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "0")  # every file counts as large
    small_counts.write_h5ad(tmp_path / "csr.h5ad")
    run_preprocess(tmp_path / "csr.h5ad", tmp_path / "c.h5ad", tmp_path / "c.png")
    assert streamed == [tmp_path / "csr.h5ad"]
    small_counts.X = small_counts.X.toarray()  # dense counts cannot be streamed
    small_counts.write_h5ad(tmp_path / "dense.h5ad")
    run_preprocess(tmp_path / "dense.h5ad", tmp_path / "d.h5ad", tmp_path / "d.png")
    assert len(streamed) == 1 and anndata.read_h5ad(tmp_path / "d.h5ad").n_obs > 0
