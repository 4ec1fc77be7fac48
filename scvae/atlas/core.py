"""The collapse atlas: each collapse mechanism swept on real data, and remedies measured.

The grid (``config/atlas.yaml``, section ``atlas``) has three parts:

- **sweeps**: each mechanism's knob over a range of values, one model per value
  (``sweep_seeds``), on top of the workflow ``defaults`` and the atlas ``base``;
- **remedies**: the mechanism's collapsing setting (``collapse``), with no remedy and
  with each remedy, over ``seeds``;
- **healthy**: the reference variant (``healthy``, a variant of the workflow config)
  over ``seeds``;
- **candidates**: other variants of the workflow config (``candidates``, e.g. the
  ``recommended`` one) over ``seeds``, measured on the same footing as the reference.

Each run trains on a fixed random subset of ``n_cells`` cells, computes the collapse
diagnostics (:func:`scvae.diagnostics.core.diagnose`) and scores the latent space against the
cell-type labels on the posterior means and on one posterior draw per cell
(:func:`scvae.cluster.posterior_sample_scores`). :func:`collect` gathers the runs into one
table; :mod:`scvae.atlas.figures` draws it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scvae.training.settings import MODEL_KEYS, TRAIN_KEYS
from scvae.utils.jsonio import read_json, write_json

log = logging.getLogger(__name__)

STAGES = ("sweep", "remedy", "healthy", "candidate")


@dataclass(frozen=True)
class AtlasRun:
    """One training of the atlas.

    Attributes
    ----------
    stage
        ``sweep``, ``remedy``, ``healthy`` or ``candidate``.
    mechanism
        Mechanism name (empty for ``healthy``).
    point
        Sweep point name (for remedies: the collapsing point).
    remedy
        Remedy name (``none`` for sweeps and ``healthy``).
    order
        Position of the point in its sweep (the x axis).
    value
        The swept value, when the sweep is over one setting (else ``None``).
    settings
        Flat model and training settings, seed excluded.
    """

    stage: str
    mechanism: str
    point: str
    remedy: str
    order: int
    value: float | str | None
    settings: dict = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        """Run identifier, used in file paths: ``<stage>.<mechanism>.<point or remedy>``."""
        if self.stage == "healthy":
            return "healthy"
        if self.stage == "candidate":
            return f"candidate.{self.point}"
        last = self.point if self.stage == "sweep" else self.remedy
        return f"{self.stage}.{self.mechanism}.{last}"


def _check_settings(settings: Mapping, where: str) -> dict:
    unknown = sorted(set(settings) - MODEL_KEYS - TRAIN_KEYS)
    if unknown:
        raise ValueError(f"atlas config {where}: unknown setting(s) {unknown}")
    return dict(settings)


def _point_name(knob: str, value: Any) -> str:
    return f"{knob}{value:g}" if isinstance(value, int | float) else f"{knob}{value}"


def mechanism_points(name: str, spec: Mapping) -> list[tuple[str, float | str | None, dict]]:
    """The sweep points of one mechanism: ``(point name, value, settings)`` in order.

    A mechanism either sweeps one setting (``knob`` and ``values``; points are named
    ``<knob><value>``, e.g. ``beta32``) or lists named ``points`` (a mapping of name to
    settings).
    """
    if "points" in spec:
        return [
            (str(p), None, _check_settings(s or {}, f"mechanism {name} point {p}"))
            for p, s in spec["points"].items()
        ]
    knob = spec.get("knob")
    if knob not in MODEL_KEYS | TRAIN_KEYS:
        raise ValueError(
            f"atlas config mechanism {name}: knob {knob!r} is not a setting; give `points` "
            "for a sweep over several settings"
        )
    return [(_point_name(knob, v), v, {knob: v}) for v in spec["values"]]


def collapse_point(name: str, spec: Mapping) -> str:
    """Name of the point that the remedies start from (``collapse``: a point or a value)."""
    points = [p for p, _, _ in mechanism_points(name, spec)]
    chosen = spec["collapse"]
    if str(chosen) in points:
        return str(chosen)
    if "knob" in spec and _point_name(spec["knob"], chosen) in points:
        return _point_name(spec["knob"], chosen)
    raise ValueError(f"atlas config mechanism {name}: collapse {chosen!r} is not one of {points}")


def atlas_runs(config: Mapping) -> list[AtlasRun]:
    """Every run of the atlas grid (seeds and datasets excluded).

    Parameters
    ----------
    config
        The workflow config with ``defaults``, ``variants`` and ``atlas``.

    Returns
    -------
    list of AtlasRun
        Sweeps, then remedies, then the healthy reference.
    """
    atlas = config["atlas"]
    base = {**config.get("defaults", {}), **_check_settings(atlas.get("base", {}), "base")}
    base.pop("seed", None)
    remedies = atlas.get("remedies", {})
    runs: list[AtlasRun] = []
    for mech, spec in atlas["mechanisms"].items():
        # A mechanism's own base (e.g. longer training) applies to its sweep and remedies.
        mech_base = {**base, **_check_settings(spec.get("base", {}), f"mechanism {mech} base")}
        points = mechanism_points(mech, spec)
        for i, (point, value, settings) in enumerate(points):
            runs.append(AtlasRun("sweep", mech, point, "none", i, value, {**mech_base, **settings}))
        collapse = collapse_point(mech, spec)
        i, value, settings = next((i, v, s) for i, (p, v, s) in enumerate(points) if p == collapse)
        chosen = spec.get("global_remedies", list(remedies))
        unknown = sorted(set(chosen) - set(remedies))
        if unknown:
            raise ValueError(
                f"atlas config mechanism {mech}: global_remedies {unknown} are not in remedies"
            )
        own = {**{r: remedies[r] for r in chosen}, **spec.get("remedies", {})}
        for r, (remedy, extra) in enumerate(own.items()):
            extra = _check_settings(extra or {}, f"remedy {remedy}")
            runs.append(
                AtlasRun(
                    "remedy", mech, collapse, remedy, r, value, {**mech_base, **settings, **extra}
                )
            )
    variants = config.get("variants", {})
    references = [("healthy", atlas["healthy"])]
    references += [("candidate", v) for v in atlas.get("candidates", [])]
    for i, (stage, variant) in enumerate(references):
        if variant not in variants:
            raise ValueError(f"atlas config: {stage} variant {variant!r} is not in variants")
        settings = {**base, **(variants[variant] or {})}
        runs.append(AtlasRun(stage, "", variant, "none", i, None, settings))
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"atlas config: duplicated run names {duplicated}")
    return runs


def run_seeds(config: Mapping, run: AtlasRun) -> list[int]:
    """Seeds of a run: ``sweep_seeds`` for sweeps, ``seeds`` otherwise."""
    atlas = config["atlas"]
    key = "sweep_seeds" if run.stage == "sweep" else "seeds"
    return [int(s) for s in atlas[key]]


def subsample(n_obs: int, n_cells: int | None, seed: int = 0) -> np.ndarray:
    """Sorted rows of a fixed random subset (all rows when ``n_cells`` is 0/None or too big)."""
    if not n_cells or n_cells >= n_obs:
        return np.arange(n_obs)
    return np.sort(np.random.default_rng(seed).choice(n_obs, n_cells, replace=False))


def atlas_jobs(config: Mapping) -> dict[str, list[dict]]:
    """Group the atlas's trainings into jobs, one process each.

    A job is a mechanism's whole sweep (``sweep.<mechanism>``), one remedy of a
    mechanism over the seeds (``remedy.<mechanism>.<remedy>``), or the healthy
    reference over the seeds (``healthy``). Several trainings per process pay the
    import and JIT-compilation cost (numba, in the kNN graph) once.

    Returns
    -------
    dict
        ``{job name: [run spec, ...]}``; a run spec is a plain dict with the run's
        identifiers, ``settings`` and ``seed``, as :func:`run_atlas_job` takes it.
    """
    jobs: dict[str, list[dict]] = {}
    for run in atlas_runs(config):
        job = f"sweep.{run.mechanism}" if run.stage == "sweep" else run.name
        for seed in run_seeds(config, run):
            jobs.setdefault(job, []).append(
                {
                    "name": run.name,
                    "stage": run.stage,
                    "mechanism": run.mechanism,
                    "point": run.point,
                    "remedy": run.remedy,
                    "order": run.order,
                    "value": run.value,
                    "settings": run.settings,
                    "seed": seed,
                }
            )
    return jobs


def run_atlas_job(
    input_h5ad: str | os.PathLike,
    output_json: str | os.PathLike,
    runs: list[Mapping],
    *,
    dataset: str,
    n_cells: int | None = 2000,
    label_key: str = "label",
    resolution: float = 1.0,
    n_neighbors: int = 15,
    kmeans_fits: int = 5,
    diagnostics: Mapping | None = None,
) -> list[dict]:
    """Train the atlas models of one job and write their records as a JSON list.

    Parameters
    ----------
    input_h5ad
        Preprocessed AnnData with counts in ``layers["counts"]`` and labels in ``obs``.
    output_json
        Where the records go (written atomically, once every run is done).
    runs
        Run specs from :func:`atlas_jobs` (identifiers, ``settings``, ``seed``).
    dataset
        Dataset name stored in the records.
    n_cells
        Cells of the fixed random subset (the same for every run on this input).
    label_key, resolution, n_neighbors
        Labels column and Leiden settings.
    kmeans_fits
        KMeans fits averaged in the KMeans scores (:func:`scvae.cluster.label_scores`).
    diagnostics
        Keyword arguments of :func:`scvae.diagnostics.core.diagnose`.

    Returns
    -------
    list of dict
        The records.
    """
    from scvae.data.readers import read_h5ad
    from scvae.errors import InputError

    adata = read_h5ad(input_h5ad)
    if label_key not in adata.obs:
        raise InputError(f"{input_h5ad}: the atlas needs cell-type labels in obs[{label_key!r}]")
    adata = adata[subsample(adata.n_obs, n_cells)].copy()
    records = []
    for spec in runs:
        spec = dict(spec)
        settings, seed = spec.pop("settings"), int(spec.pop("seed"))
        record = _run_one(
            adata,
            settings,
            seed,
            label_key=label_key,
            resolution=resolution,
            n_neighbors=n_neighbors,
            kmeans_fits=kmeans_fits,
            diagnostics=diagnostics,
            source=str(input_h5ad),
        )
        records.append({"dataset": dataset, **spec, "seed": seed, "settings": settings, **record})
        log.info(
            "%s %s seed %d: MI %.3f, AU %d, KMeans ARI %.3f (on a posterior draw %.3f)",
            dataset,
            spec.get("name"),
            seed,
            record["mi"],
            record["active_units"],
            record["kmeans_ari"],
            record["kmeans_ari_sample"],
        )
    write_json(records, output_json)
    return records


def _run_one(
    adata,
    settings: Mapping,
    seed: int,
    *,
    label_key: str,
    resolution: float,
    n_neighbors: int,
    kmeans_fits: int,
    diagnostics: Mapping | None,
    source: str,
) -> dict:
    """Train, diagnose and score one model on ``adata``."""
    from scvae.cluster import label_scores, posterior_sample_scores
    from scvae.diagnostics.core import diagnose
    from scvae.training.loop import train

    started = time.perf_counter()
    model = train(adata, progress=False, source=source, **{**settings, "seed": seed})
    seconds = time.perf_counter() - started
    diag = diagnose(model, adata, seed=seed, **(diagnostics or {}))
    loc, scale = model.get_latent(adata, return_scale=True)
    labels = adata.obs[label_key].astype(str).to_numpy()
    scoring = {"resolution": resolution, "n_neighbors": n_neighbors, "kmeans_fits": kmeans_fits}
    means = label_scores(loc, labels, seed=seed, **scoring)
    sample = posterior_sample_scores(loc, scale, labels, seed=seed, **scoring)
    history = model.history
    return {
        "n_cells": int(adata.n_obs),
        "epochs": int(model.summary["epochs"]),
        "train_seconds": seconds,
        "verdict": diag["verdict"],
        "mi": diag["mi"],
        "mi_cap": diag["mi_cap"],
        "kl_total": diag["kl_total"],
        "kl_aggregate": diag["kl_aggregate"],
        "active_units": diag["active_units"],
        "n_latent": diag["n_latent"],
        "elbo": diag["elbo"],
        "recon": diag["recon"],
        "theta_median": diag["dispersion"].get("theta_q50"),
        "kl_per_dim": diag["kl_per_dim"],
        "mi_per_dim": diag["mi_per_dim"],
        "sensitivity_per_dim": diag["sensitivity_per_dim"],
        **means,
        **sample,
        "history": {
            col: history[col].tolist()
            for col in ("epoch", "kl_weight", "train_kl", "train_recon", "theta_median")
            if col in history
        },
    }


SCALAR_COLUMNS = (
    "dataset",
    "stage",
    "mechanism",
    "point",
    "remedy",
    "order",
    "value",
    "name",
    "seed",
    "n_cells",
    "epochs",
    "train_seconds",
    "verdict",
    "mi",
    "mi_cap",
    "kl_total",
    "kl_aggregate",
    "active_units",
    "n_latent",
    "elbo",
    "recon",
    "theta_median",
    "kmeans_ari",
    "kmeans_nmi",
    "leiden_ari",
    "leiden_nmi",
    "kmeans_ari_sample",
    "kmeans_nmi_sample",
    "leiden_ari_sample",
    "leiden_nmi_sample",
)


def collect(records: list[Mapping]) -> pd.DataFrame:
    """One row per run and seed with the scalar columns (:data:`SCALAR_COLUMNS`).

    Also ``collapsed`` (MI below 0.1 nats or no active unit, the atlas's definition)
    and, per dataset, ``d_kmeans_ari_sample`` / ``d_leiden_ari_sample``: the change
    from the healthy reference's mean over its seeds.
    """
    df = pd.DataFrame([{c: r.get(c) for c in SCALAR_COLUMNS} for r in records])
    df["collapsed"] = (df["mi"] < 0.1) | (df["active_units"] == 0)
    healthy = df[df["stage"] == "healthy"].groupby("dataset")
    for metric in ("kmeans_ari", "leiden_ari", "kmeans_ari_sample", "leiden_ari_sample"):
        ref = healthy[metric].mean()
        df[f"d_{metric}"] = df[metric] - df["dataset"].map(ref)
    stage = pd.Categorical(df["stage"], categories=list(STAGES), ordered=True)
    return (
        df.assign(_stage=stage)
        .sort_values(["dataset", "_stage", "mechanism", "order", "seed"])
        .drop(columns="_stage")
        .reset_index(drop=True)
    )


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per dataset and run."""
    metrics = [
        "mi",
        "active_units",
        "kl_total",
        "kmeans_ari",
        "leiden_ari",
        "kmeans_ari_sample",
        "leiden_ari_sample",
    ]
    keys = ["dataset", "stage", "mechanism", "point", "remedy", "order"]
    grouped = df.groupby(keys, sort=False, dropna=False)[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    out["n_seeds"] = grouped.size()
    out["n_collapsed"] = df.groupby(keys, sort=False, dropna=False)["collapsed"].sum()
    return out.reset_index()


#: The score that decides whether a remedy restores the healthy model: KMeans ARI on a
#: posterior draw, which a collapsed code cannot fake (see posterior_sample_scores).
RESTORE_METRIC = "kmeans_ari_sample"
#: A remedy restores the model when its mean score is within this of the healthy mean.
RESTORE_TOLERANCE = 0.05


def remedy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and mechanism: the collapse, the healthy reference and the best remedy.

    The best remedy is the one with the highest mean :data:`RESTORE_METRIC` over seeds;
    it ``restores`` the model when that mean is within :data:`RESTORE_TOLERANCE` of the
    healthy reference's and its code is not collapsed (MI >= 0.1 nats and active units
    on every seed).

    Parameters
    ----------
    df
        Output of :func:`collect`.

    Returns
    -------
    pandas.DataFrame
        One row per dataset and mechanism.
    """
    metrics = [
        "mi",
        "active_units",
        "kmeans_ari",
        "leiden_ari",
        "kmeans_ari_sample",
        "leiden_ari_sample",
    ]
    rows = []
    remedies = df[df["stage"] == "remedy"]
    healthy = df[df["stage"] == "healthy"].groupby("dataset")[metrics].mean()
    for (dataset, mechanism), runs in remedies.groupby(["dataset", "mechanism"], sort=False):
        by_remedy = runs.groupby("remedy", sort=False)
        means = by_remedy[metrics].mean()
        collapsed_any = by_remedy["collapsed"].any()
        row = {"dataset": dataset, "mechanism": mechanism, "point": runs["point"].iloc[0]}
        if "none" in means.index:
            row.update({f"collapse_{m}": means.loc["none", m] for m in metrics})
            row["collapse_n_collapsed"] = int(by_remedy["collapsed"].sum().loc["none"])
        if dataset in healthy.index:
            row.update({f"healthy_{m}": healthy.loc[dataset, m] for m in metrics})
        fixes = means.drop(index="none", errors="ignore")
        if len(fixes):
            best = fixes[RESTORE_METRIC].idxmax()
            row["best_remedy"] = best
            row.update({f"best_{m}": fixes.loc[best, m] for m in metrics})
            gap = row.get(f"healthy_{RESTORE_METRIC}", np.nan) - fixes.loc[best, RESTORE_METRIC]
            row["best_gap"] = gap
            row["restores"] = bool(gap <= RESTORE_TOLERANCE and not collapsed_any.loc[best])
        rows.append(row)
    return pd.DataFrame(rows)


def read_records(paths: list[str | os.PathLike]) -> list[dict]:
    """Read and concatenate the record lists written by :func:`run_atlas_job`."""
    return [record for p in paths for record in read_json(p)]


def run_atlas_report(
    inputs: list[str | os.PathLike],
    table: str | os.PathLike,
    summary: str | os.PathLike,
    *,
    remedies: str | os.PathLike | None = None,
    figure_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Write ``atlas.tsv`` (every run and seed), ``atlas_summary.tsv`` and the figures.

    Parameters
    ----------
    inputs
        Record files of the atlas jobs.
    table, summary
        Output TSV paths (written atomically).
    remedies
        Where the remedy table (:func:`remedy_table`) goes (None: not written).
    figure_dir
        Folder for the figures (:func:`scvae.atlas.figures.write_atlas_figures`).

    Returns
    -------
    pandas.DataFrame
        The per-run table.
    """
    from scvae.utils.atomic import atomic_path

    records = read_records(list(inputs))
    df = collect(records)
    outputs = [(df, table), (summarize(df), summary)]
    if remedies is not None:
        outputs.append((remedy_table(df), remedies))
    for frame, path in outputs:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    if figure_dir is not None:
        from scvae.atlas.figures import write_atlas_figures

        os.makedirs(figure_dir, exist_ok=True)
        write_atlas_figures(records, figure_dir)
    log.info("wrote %s (%d runs) and %s", table, len(df), summary)
    return df
