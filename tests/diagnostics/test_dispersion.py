"""Quantiles of the inverse dispersion for per-gene, fixed and Poisson models."""

from __future__ import annotations

import pytest

from scvae.diagnostics.dispersion import dispersion_stats


def test_dispersion_stats(tiny_vae):
    stats = dispersion_stats(tiny_vae())
    assert stats["kind"] == "gene" and stats["n_genes"] == 12
    assert stats["theta_q05"] <= stats["theta_q50"] <= stats["theta_q95"]
    fixed = dispersion_stats(tiny_vae(theta=2.5))
    assert fixed["kind"] == "fixed" and fixed["theta_q50"] == pytest.approx(2.5)
    assert dispersion_stats(tiny_vae(likelihood="poisson")) == {}


def test_dispersion_stats_per_gene_and_batch(tiny_vae):
    stats = dispersion_stats(tiny_vae(dispersion="gene-batch", n_categories=(4,), n_batch=4))
    assert stats["kind"] == "gene-batch" and stats["n_genes"] == 12 and stats["n_batches"] == 4
    # Without a batch, gene-batch is the per-gene dispersion.
    assert dispersion_stats(tiny_vae(dispersion="gene-batch"))["kind"] == "gene"
