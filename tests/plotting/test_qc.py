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
