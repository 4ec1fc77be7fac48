"""The atlas tables: one row per run and seed, means over seeds, the best remedies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scvae.atlas.tables import collect, remedy_table, summarize


def test_remedy_table_picks_the_best_remedy_and_checks_the_tolerance():
    def rows(stage, mechanism, remedy, mi, ari, seeds=(0, 1)):
        return [
            {
                "dataset": "d",
                "stage": stage,
                "mechanism": mechanism,
                "point": "p",
                "remedy": remedy,
                "seed": s,
                "mi": mi,
                "active_units": 10 if mi > 0.1 else 0,
                "kmeans_ari": ari,
                "leiden_ari": ari,
                "kmeans_ari_sample": ari,
                "leiden_ari_sample": ari,
                "collapsed": mi < 0.1,
            }
            for s in seeds
        ]

    df = pd.DataFrame(
        rows("healthy", "", "none", 5.0, 0.70)
        + rows("remedy", "m", "none", 0.01, 0.0)
        + rows("remedy", "m", "good", 4.0, 0.67)
        + rows("remedy", "m", "meh", 2.0, 0.40)
        + rows("remedy", "n", "none", 0.01, 0.0)
        + rows("remedy", "n", "weak", 1.0, 0.50)
    )
    table = remedy_table(df).set_index("mechanism")
    assert table.loc["m", "best_remedy"] == "good" and bool(table.loc["m", "restores"])
    assert table.loc["m", "best_gap"] == pytest.approx(0.03)
    assert table.loc["n", "best_remedy"] == "weak" and not bool(table.loc["n", "restores"])
    assert table.loc["m", "collapse_mi"] == pytest.approx(0.01)
    assert table.loc["m", "collapse_n_collapsed"] == 2


def test_collect_flags_collapse_by_the_verdict_and_by_its_scalars_without_one(small_records):
    # MI and active units above the thresholds, but total KL below: the verdict's call.
    low_kl = {**small_records[2], "mi": 0.12, "kl_total": 0.09, "active_units": 1}
    records = [
        {**low_kl, "verdict": "collapsed"},
        {**low_kl, "seed": 1},  # no verdict recorded: the same tests, on the scalars
        {**low_kl, "seed": 2, "verdict": "partial collapse"},
    ]
    assert collect(records)["collapsed"].tolist() == [True, True, False]


def test_collect_orders_runs_and_measures_them_against_the_healthy_mean(small_records):
    df = collect(small_records)
    assert list(df["stage"]) == ["sweep"] * 2 + ["remedy"] * 4 + ["healthy"] * 2
    assert list(df["point"][:2]) == ["beta1", "beta8"]
    assert list(df.loc[df.stage == "healthy", "seed"]) == [0, 1]
    assert df["collapsed"].tolist() == [False, True, True, True, False, False, False, False]
    healthy = df.loc[df.stage == "healthy", "kmeans_ari_sample"].mean()
    assert df["d_kmeans_ari_sample"].to_numpy() == pytest.approx(
        df["kmeans_ari_sample"].to_numpy() - healthy
    )
    assert "train_seconds" in df and df["train_seconds"].isna().all()  # absent: missing


def test_summarize_gives_mean_sd_and_counts_per_run(small_records):
    summary = summarize(collect(small_records)).set_index("remedy")
    linear = summary.loc["linear"]
    assert linear["n_seeds"] == 2 and linear["n_collapsed"] == 0
    assert linear["kmeans_ari_mean"] == pytest.approx(0.785)
    assert linear["kmeans_ari_sd"] == pytest.approx(np.std([0.78, 0.79], ddof=1))
    assert summary.loc["none"].set_index("stage").loc["remedy", "n_collapsed"] == 2
