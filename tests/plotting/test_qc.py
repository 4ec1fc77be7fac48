"""The QC plot."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from scvae.plotting.qc import plot_qc


def test_plot_qc_without_mito(tmp_path):
    X = sparse.random(30, 20, density=0.5, format="csr", random_state=0) * 10
    X.data = np.ceil(X.data)
    adata = anndata.AnnData(X=X, var=pd.DataFrame(index=[f"g{i}" for i in range(20)]))
    path = tmp_path / "qc.png"
    plot_qc(adata, path, thresholds={"min_genes": 5, "min_counts": None})
    assert path.read_bytes()[:4] == b"\x89PNG"


def _png_size(path) -> tuple[int, int]:
    import struct

    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_plot_qc_has_one_row_per_batch(tmp_path, small_counts):
    small_counts.obs["plate"] = pd.Categorical(np.repeat(["p1", "p2", "p3"], 20))
    plot_qc(small_counts, tmp_path / "all.png", thresholds={"min_genes": 5})
    plot_qc(small_counts, tmp_path / "rows.png", thresholds={"min_genes": 5}, batch_key="plate")
    all_w, all_h = _png_size(tmp_path / "all.png")
    rows_w, rows_h = _png_size(tmp_path / "rows.png")
    assert rows_w == all_w and rows_h > 1.5 * all_h


def test_plot_qc_batch_rows_draw_each_batchs_thresholds(small_counts, monkeypatch, tmp_path):
    import scvae.plotting.qc

    figures = []
    monkeypatch.setattr(
        scvae.plotting.qc, "save_figure", lambda fig, path, **k: figures.append(fig)
    )
    small_counts.obs["plate"] = pd.Categorical(np.repeat(["p1", "p2"], [40, 20]))
    X = small_counts.X.toarray()
    X[40:] *= 10  # p2 is deeper: max_counts cuts into it only
    small_counts.layers["counts"] = sparse.csr_matrix(X)
    limit = float(X[:40].sum(axis=1).max())
    plot_qc(small_counts, tmp_path / "qc.png", thresholds={"max_counts": limit}, batch_key="plate")
    axes = figures[0].axes
    assert len(axes) == 6  # 2 batches x (counts, genes, mito)
    assert axes[0].get_ylabel().startswith("p1\n(40 cells)")
    assert axes[3].get_ylabel().startswith("p2\n(20 cells)")
    legend_p1 = [t.get_text() for t in axes[0].get_legend().get_texts()]
    legend_p2 = [t.get_text() for t in axes[3].get_legend().get_texts()]
    assert any("removes 0 of 40" in t for t in legend_p1)
    assert any("removes 20 of 20" in t for t in legend_p2)
    assert "in 2 batches" in figures[0]._suptitle.get_text()
