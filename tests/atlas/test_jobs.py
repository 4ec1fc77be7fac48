"""One atlas job end to end: trainings, records, and the report drawn from them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from scvae.atlas.grid import atlas_jobs
from scvae.atlas.jobs import run_atlas_job
from scvae.atlas.report import run_atlas_report
from scvae.atlas.tables import summarize


def test_atlas_job_and_report_end_to_end(pbmc300_h5ad, tmp_path, atlas_config):
    config = atlas_config(base={"max_epochs": 2, "n_hidden": 16, "batch_size": 64})
    jobs = atlas_jobs(config)
    params = {"n_cells": 150, "diagnostics": {"k_iwae": 2, "n_jacobian": 20}}
    paths = []
    for job in ("sweep.kl_weight", "remedy.kl_weight.none", "healthy"):
        out = tmp_path / f"{job}.json"
        records = run_atlas_job(pbmc300_h5ad, out, jobs[job], dataset="pbmc300", **params)
        paths.append(out)
        assert len(records) == len(jobs[job])
    saved = json.loads(paths[0].read_text())
    assert [r["point"] for r in saved] == ["beta1", "beta8"]
    for key in ("mi", "active_units", "kmeans_ari", "leiden_ari_sample", "kl_per_dim"):
        assert key in saved[0]
    assert saved[0]["n_cells"] == 150 and len(saved[0]["history"]["train_kl"]) == 2

    table, summary = tmp_path / "atlas.tsv", tmp_path / "summary.tsv"
    remedies = tmp_path / "remedies.tsv"
    df = run_atlas_report(paths, table, summary, remedies=remedies, figure_dir=tmp_path / "figures")
    assert len(df) == 2 + 2 + 2
    assert list(df["stage"].unique()) == ["sweep", "remedy", "healthy"]
    healthy_mean = df.loc[df.stage == "healthy", "kmeans_ari_sample"].mean()
    row = df.iloc[0]
    assert row["d_kmeans_ari_sample"] == pytest.approx(row["kmeans_ari_sample"] - healthy_mean)
    s = summarize(df)
    assert set(s["n_seeds"]) == {1, 2}
    assert (tmp_path / "figures" / "sweep_kl_weight.png").exists()
    best = pd.read_csv(remedies, sep="\t")
    assert list(best["mechanism"]) == ["kl_weight"]
    assert "collapse_mi" in best and "healthy_kmeans_ari_sample" in best
