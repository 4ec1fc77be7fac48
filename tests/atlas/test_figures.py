"""The atlas figures, drawn from synthetic records of three datasets and mechanisms."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from scvae.atlas import figures as atlas_plots
from scvae.atlas.tables import SCALAR_COLUMNS, collect

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASETS = ("pbmc4k", "zeisel", "paul15")
MECHANISMS = ("kl_weight", "vicious_cycle", "skip")
POINTS = {
    "kl_weight": ["beta1", "beta8", "beta32"],
    "vicious_cycle": ["theta_init0.01", "theta_init1", "theta_init100"],
    "skip": ["skip_none", "skip_mid", "skip_all"],
}
REMEDIES = ("none", "linear", "free_bits0.5")
N_LATENT = 4


def make_record(
    dataset: str,
    stage: str,
    mechanism: str,
    point: str,
    remedy: str = "none",
    *,
    order: int = 0,
    seed: int = 0,
    strength: float = 1.0,
    value: float | None = None,
    theta: float | None = 5.0,
    n_epochs: int = 5,
) -> dict:
    """A run record with every key of :func:`scvae.atlas.jobs.run_atlas_job`.

    ``strength`` in [0, 1] goes from a collapsed run (0) to a healthy one (1).
    """
    # crc32, not hash(): str hashes change between processes, the records must not.
    key = f"{dataset}/{stage}/{mechanism}/{point}/{remedy}/{seed}"
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    s = float(np.clip(strength + 0.03 * rng.normal(), 0.0, 1.0))
    mi = 4.0 * s**2 if s > 0.05 else 0.01 * s
    kl_aggregate = 0.3 + 0.5 * s
    active = int(round(N_LATENT * s))
    kl_per_dim = [
        float(mi / N_LATENT * (1 + 0.5 * d)) if d < active else 1e-9 for d in range(N_LATENT)
    ]
    sens = [float(0.5 * (d + 1)) if d < active else 0.0 for d in range(N_LATENT)]
    ari = 0.75 * s + 0.02 * rng.normal()
    epochs = list(range(1, n_epochs + 1))
    theta_hist = [None if theta is None else theta * (1 + 0.2 * e) for e in epochs]
    name = (
        "healthy"
        if stage == "healthy"
        else f"{stage}.{mechanism}.{point if stage == 'sweep' else remedy}"
    )
    return {
        "dataset": dataset,
        "stage": stage,
        "mechanism": mechanism,
        "point": point,
        "remedy": remedy,
        "order": order,
        "value": value,
        "name": name,
        "seed": seed,
        "n_cells": 500,
        "epochs": n_epochs,
        "train_seconds": 1.5,
        "verdict": "collapsed" if mi < 0.1 else "healthy",
        "mi": mi,
        "mi_cap": math.log(500),
        "kl_total": mi + kl_aggregate,
        "kl_aggregate": kl_aggregate,
        "active_units": active,
        "n_latent": N_LATENT,
        "elbo": -1000.0,
        "recon": -990.0,
        "theta_median": theta,
        "kmeans_ari": float(np.clip(ari + 0.1, 0, 1)),
        "kmeans_nmi": float(np.clip(ari + 0.15, 0, 1)),
        "leiden_ari": float(np.clip(ari, 0, 1)),
        "leiden_nmi": float(np.clip(ari + 0.1, 0, 1)),
        "kmeans_ari_sample": float(np.clip(ari, 0, 1)),
        "kmeans_nmi_sample": float(np.clip(ari + 0.05, 0, 1)),
        "leiden_ari_sample": float(np.clip(ari - 0.05, 0, 1)),
        "leiden_nmi_sample": float(np.clip(ari, 0, 1)),
        "kl_per_dim": kl_per_dim,
        "mi_per_dim": [k * 0.8 for k in kl_per_dim],
        "sensitivity_per_dim": sens,
        "history": {
            "epoch": epochs,
            "kl_weight": [1.0] * n_epochs,
            "train_kl": [float(mi + kl_aggregate) * (1 + 1 / e) for e in epochs],
            "train_recon": [1000.0 / e for e in epochs],
            "theta_median": theta_hist,
        },
    }


def make_records(
    datasets: tuple[str, ...] = DATASETS, mechanisms: tuple[str, ...] = MECHANISMS
) -> list[dict]:
    records = []
    for dataset in datasets:
        for mech in mechanisms:
            points = POINTS[mech]
            for i, point in enumerate(points):
                theta = 10.0 ** (i - 1) if mech == "vicious_cycle" else 5.0
                records.append(
                    make_record(
                        dataset, "sweep", mech, point, order=i, strength=1 - i / 2, theta=theta
                    )
                )
            for r, remedy in enumerate(REMEDIES):
                for seed in (0, 1):
                    records.append(
                        make_record(
                            dataset,
                            "remedy",
                            mech,
                            points[-1],
                            remedy,
                            order=r,
                            seed=seed,
                            strength=r / 2,
                        )
                    )
        for seed in (0, 1):
            records.append(make_record(dataset, "healthy", "", "nb_beta1", seed=seed))
    return records


def expected_files(datasets: tuple[str, ...], mechanisms: tuple[str, ...]) -> set[str]:
    names = {f"sweep_{m}.png" for m in mechanisms} | {f"remedies_{m}.png" for m in mechanisms}
    names |= {f"kl_sensitivity_{d}.png" for d in datasets}
    names |= {f"mi_identity_{d}.png" for d in datasets}
    names.add("ari_means_vs_sample.png")
    if "vicious_cycle" in mechanisms:
        names.add("vicious_cycle.png")
    return names


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4), image.shape
    assert image.shape[0] > 200 and image.shape[1] > 200
    # Not a blank canvas: some pixels differ from white.
    assert (image[..., :3] < 0.9).any()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records()


@pytest.fixture(scope="module")
def all_figures(records, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("atlas_figs")
    return out, atlas_plots.write_atlas_figures(records, out)


def test_record_helper_has_every_scalar_column(records):
    missing = set(SCALAR_COLUMNS) - set(records[0])
    assert not missing
    df = collect(records)
    assert len(df) == len(records) == 3 * (3 * 3 + 3 * 3 * 2 + 2)


def test_write_atlas_figures_writes_every_figure(all_figures):
    out, written = all_figures
    names = [p.name for p in written]
    assert len(names) == len(set(names)) == 14
    assert set(names) == expected_files(DATASETS, MECHANISMS)
    # Nothing else in the folder: no temporary files left behind by the atomic writes.
    assert {p.name for p in out.iterdir()} == set(names)
    for path in written:
        assert path.parent == out
        assert_png(path)


def test_missing_mechanism_skips_its_figures(tmp_path):
    mechanisms = ("kl_weight",)
    records = make_records(datasets=("pbmc4k",), mechanisms=mechanisms)
    written = atlas_plots.write_atlas_figures(records, tmp_path)
    names = {p.name for p in written}
    assert names == expected_files(("pbmc4k",), mechanisms)
    assert names == {
        "sweep_kl_weight.png",
        "remedies_kl_weight.png",
        "kl_sensitivity_pbmc4k.png",
        "mi_identity_pbmc4k.png",
        "ari_means_vs_sample.png",
    }
    assert "vicious_cycle.png" not in names
    assert not any("vicious_cycle" in n for n in names)
    assert {p.name for p in tmp_path.iterdir()} == names


def test_sweep_without_remedies_and_no_healthy(tmp_path):
    records = [
        r
        for r in make_records(datasets=("pbmc4k",), mechanisms=("kl_weight",))
        if r["stage"] == "sweep"
    ]
    written = atlas_plots.write_atlas_figures(records, tmp_path)
    assert sorted(p.name for p in written) == ["ari_means_vs_sample.png", "sweep_kl_weight.png"]
    for path in written:
        assert_png(path)


def test_no_records_writes_nothing(tmp_path):
    assert atlas_plots.write_atlas_figures([], tmp_path / "figs") == []
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_vicious_cycle_without_theta(tmp_path, missing):
    records = make_records(datasets=("pbmc4k", "zeisel"), mechanisms=("vicious_cycle",))
    for r in records:
        if r["dataset"] == "pbmc4k":
            # A Poisson likelihood has no dispersion: null (JSON) or NaN throughout.
            r["theta_median"] = missing
            r["history"]["theta_median"] = [missing] * len(r["history"]["epoch"])
        elif r["stage"] == "sweep" and r["order"] == 0:
            # One NaN epoch in an otherwise recorded curve.
            r["history"]["theta_median"][2] = missing
    path = tmp_path / "vicious_cycle.png"
    atlas_plots.plot_vicious_cycle(records, path)
    assert_png(path)


def test_history_without_theta_key(tmp_path):
    records = make_records(datasets=("pbmc4k",), mechanisms=("vicious_cycle",))
    for r in records:
        r["history"].pop("theta_median")
    path = tmp_path / "vc.png"
    atlas_plots.plot_vicious_cycle(records, path)
    assert_png(path)


def test_best_remedy_is_highest_mean_posterior_draw_ari():
    records = make_records(datasets=("pbmc4k",), mechanisms=("kl_weight",))
    remedies = [r for r in records if r["stage"] == "remedy"]
    assert atlas_plots._best_remedy(remedies) == "free_bits0.5"
    for r in remedies:
        if r["remedy"] == "linear":
            r["kmeans_ari_sample"] = 0.99
    assert atlas_plots._best_remedy(remedies) == "linear"
    # "none" never counts as a remedy, even when it scores best.
    assert atlas_plots._best_remedy([r for r in remedies if r["remedy"] == "none"]) is None


def test_kl_sensitivity_with_zero_sensitivity_everywhere(tmp_path):
    records = make_records(datasets=("pbmc4k",), mechanisms=("kl_weight",))
    for r in records:
        r["sensitivity_per_dim"] = [0.0] * N_LATENT
    path = tmp_path / "kls.png"
    atlas_plots.plot_kl_vs_sensitivity(records, "pbmc4k", path)
    assert_png(path)
