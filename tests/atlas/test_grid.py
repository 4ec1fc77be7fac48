"""The atlas grid: sweeps, remedies and references from the config, jobs, the subset."""

from __future__ import annotations

import numpy as np
import pytest

from scvae.atlas.grid import atlas_jobs, atlas_runs, collapse_point, mechanism_points, subsample


def test_grid_expands_sweeps_remedies_and_healthy_reference(atlas_config):
    runs = atlas_runs(atlas_config())
    names = [r.name for r in runs]
    assert names == [
        "sweep.kl_weight.beta1",
        "sweep.kl_weight.beta8",
        "remedy.kl_weight.none",
        "remedy.kl_weight.linear",
        "sweep.skip.none",
        "sweep.skip.ungated",
        "remedy.skip.none",
        "remedy.skip.linear",
        "remedy.skip.dropout",
        "healthy",
    ]
    by_name = {r.name: r for r in runs}
    # defaults, then base, then the point, then the remedy
    assert by_name["sweep.kl_weight.beta8"].settings == {"n_latent": 4, "max_epochs": 3, "beta": 8}
    assert by_name["remedy.skip.dropout"].settings["skip"] == "ungated"
    assert by_name["remedy.skip.dropout"].settings["skip_dropout"] == 0.5
    assert by_name["remedy.kl_weight.linear"].settings["beta"] == 8
    assert by_name["healthy"].settings == {"n_latent": 4, "max_epochs": 3, "free_bits": 0.5}

    jobs = atlas_jobs(atlas_config())
    assert [len(jobs[j]) for j in ("sweep.kl_weight", "remedy.kl_weight.none", "healthy")] == [
        2,
        2,
        2,
    ]
    assert [r["seed"] for r in jobs["remedy.skip.dropout"]] == [0, 1]
    assert [r["point"] for r in jobs["sweep.skip"]] == ["none", "ungated"]


def test_mechanism_base_and_global_remedy_subset(atlas_config):
    config = atlas_config()
    skip = config["atlas"]["mechanisms"]["skip"]
    skip["base"] = {"batch_size": 32}
    skip["global_remedies"] = ["none"]
    by_name = {r.name: r for r in atlas_runs(config)}
    # The mechanism's base reaches its sweep and remedies, and only those.
    assert by_name["sweep.skip.none"].settings["batch_size"] == 32
    assert by_name["remedy.skip.dropout"].settings["batch_size"] == 32
    assert "batch_size" not in by_name["remedy.kl_weight.none"].settings
    assert "batch_size" not in by_name["healthy"].settings
    # Only the chosen global remedies run on it; its own remedies still do.
    assert "remedy.skip.linear" not in by_name
    assert {"remedy.skip.none", "remedy.skip.dropout", "remedy.kl_weight.linear"} <= set(by_name)

    skip["global_remedies"] = ["none", "cyclical"]
    with pytest.raises(ValueError, match=r"global_remedies \['cyclical'\]"):
        atlas_runs(config)
    skip["global_remedies"] = ["none"]
    skip["base"] = {"bogus": 1}
    with pytest.raises(ValueError, match=r"mechanism skip base: unknown setting"):
        atlas_runs(config)


def test_grid_errors_name_the_problem(atlas_config):
    with pytest.raises(ValueError, match="collapse 3"):
        collapse_point("kl_weight", {"knob": "beta", "values": [1, 2], "collapse": 3})
    with pytest.raises(ValueError, match="knob 'bogus'"):
        mechanism_points("m", {"knob": "bogus", "values": [1]})
    with pytest.raises(ValueError, match=r"remedy r: unknown setting\(s\) \['nope'\]"):
        atlas_runs(atlas_config(remedies={"r": {"nope": 1}}))
    with pytest.raises(ValueError, match="healthy variant 'missing'"):
        atlas_runs(atlas_config(healthy="missing"))


def test_subsample_is_fixed_and_sorted():
    rows = subsample(1000, 100, seed=0)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, subsample(1000, 100, seed=0))
    assert np.array_equal(subsample(50, 100), np.arange(50))
    assert np.array_equal(subsample(50, 0), np.arange(50))
