"""The atlas report stage: tables and figures from the records of several jobs."""

from __future__ import annotations

import json

import pandas as pd

from scvae.atlas.report import run_atlas_report


def test_run_atlas_report_writes_the_tables_and_the_figures(small_records, tmp_path):
    paths = [tmp_path / "job1.json", tmp_path / "job2.json"]
    paths[0].write_text(json.dumps(small_records[:4]))
    paths[1].write_text(json.dumps(small_records[4:]))
    out = tmp_path / "out"
    out.mkdir()
    table, summary, remedies = out / "atlas.tsv", out / "summary.tsv", out / "remedies.tsv"
    df = run_atlas_report(paths, table, summary, remedies=remedies, figure_dir=out / "figures")

    assert len(df) == len(small_records)
    on_disk = pd.read_csv(table, sep="\t")
    assert list(on_disk.columns) == list(df.columns)
    assert list(on_disk["name"]) == list(df["name"])
    assert set(pd.read_csv(summary, sep="\t")["n_seeds"]) == {1, 2}
    best = pd.read_csv(remedies, sep="\t")
    assert list(best["best_remedy"]) == ["linear"] and best["restores"].tolist() == [True]
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"sweep_beta.png", "remedies_beta.png", "mi_identity_d.png"} <= figures
    # Nothing but the outputs: the atomic writes leave no temporary files.
    assert {p.name for p in out.iterdir()} == {
        "atlas.tsv",
        "summary.tsv",
        "remedies.tsv",
        "figures",
    }


def test_without_remedies_or_figure_dir_only_the_two_tables_are_written(small_records, tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(small_records))
    run_atlas_report([path], tmp_path / "atlas.tsv", tmp_path / "summary.tsv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.tsv", "job.json", "summary.tsv"]
