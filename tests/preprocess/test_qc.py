"""QC metrics: mitochondrial genes, fractions and scanpy's metrics."""

from __future__ import annotations

import numpy as np

from scvae.preprocess.qc import add_qc_metrics, mito_fraction, mito_genes


def test_mito_genes_ignore_case(small_counts):
    small_counts.var_names = ["mt-a", "MT-b", "Mt-c"] + list(small_counts.var_names[3:])
    assert mito_genes(small_counts).sum() == 3
    assert mito_genes(small_counts, "zz").sum() == 0


def test_mito_fraction_is_zero_for_cells_without_counts():
    fraction = mito_fraction(np.array([1.0, 0.0]), np.array([4.0, 0.0]))
    assert fraction.tolist() == [0.25, 0.0]


def test_add_qc_metrics_drops_stale_mito_columns(small_counts):
    add_qc_metrics(small_counts)
    assert small_counts.var["mt"].sum() == 3
    assert small_counts.obs["pct_counts_mt"].between(0, 100).all()
    no_mito = small_counts[:, 3:].copy()
    add_qc_metrics(no_mito)
    assert not no_mito.var["mt"].any()
    assert "pct_counts_mt" not in no_mito.obs and "total_counts" in no_mito.obs
