"""The atlas grid: which models the collapse atlas trains, grouped into jobs.

The grid (``config/atlas.yaml``, section ``atlas``) has four parts:

- **sweeps**: each mechanism's knob over a range of values, one model per value
  (``sweep_seeds``), on top of the workflow ``defaults`` and the atlas ``base``;
- **remedies**: the mechanism's collapsing setting (``collapse``), with no remedy and
  with each remedy, over ``seeds``;
- **healthy**: the reference variant (``healthy``, a variant of the workflow config)
  over ``seeds``;
- **candidates**: other variants of the workflow config (``candidates``, e.g. the
  ``recommended`` one) over ``seeds``, measured on the same footing as the reference.

:func:`atlas_jobs` groups the runs into the jobs the workflow runs
(:func:`scvae.atlas.jobs.run_atlas_job`). This module stays free of torch, pyro and
scanpy: the Snakefile imports it to list the jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scvae.config import variant_names, variant_overrides
from scvae.training.settings import MODEL_KEYS, TRAIN_KEYS

__all__ = [
    "ATLAS_DEFAULTS",
    "STAGES",
    "AtlasRun",
    "atlas_jobs",
    "atlas_runs",
    "collapse_point",
    "mechanism_points",
    "run_seeds",
    "subsample",
]

#: The kinds of run, in the order the atlas lists them.
STAGES = ("sweep", "remedy", "healthy", "candidate")

#: Defaults of the atlas grid's optional keys, by dotted config key (``<name>``: every
#: mechanism); the workflow fills them in with :func:`scvae.config.fill_defaults`.
ATLAS_DEFAULTS: dict[str, Any] = {
    "atlas.n_cells": 1500,
    "atlas.base": {},
    "atlas.sweep_seeds": [0],
    "atlas.seeds": [0, 1, 2],
    "atlas.candidates": [],
    "atlas.resolution": 1.0,
    "atlas.diagnostics": {},
    "atlas.mechanisms.<name>.remedies": {},
}


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

    Parameters
    ----------
    name
        Mechanism name (for error messages).
    spec
        The mechanism's section of the atlas config.

    Returns
    -------
    list of tuple
        ``(point name, swept value or None, settings)`` per point.
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
    """Name of the point that the remedies start from (``collapse``: a point or a value).

    Parameters
    ----------
    name
        Mechanism name (for error messages).
    spec
        The mechanism's section of the atlas config.

    Returns
    -------
    str
        One of the names of :func:`mechanism_points`.
    """
    points = [p for p, _, _ in mechanism_points(name, spec)]
    chosen = spec["collapse"]
    if str(chosen) in points:
        return str(chosen)
    if "knob" in spec and _point_name(spec["knob"], chosen) in points:
        return _point_name(spec["knob"], chosen)
    raise ValueError(f"atlas config mechanism {name}: collapse {chosen!r} is not one of {points}")


def _mechanism_runs(mech: str, spec: Mapping, base: dict, remedies: Mapping) -> list[AtlasRun]:
    """One mechanism's sweep, then its collapsing point with no remedy and each remedy."""
    # A mechanism's own base (e.g. longer training) applies to its sweep and remedies.
    mech_base = {**base, **_check_settings(spec.get("base", {}), f"mechanism {mech} base")}
    points = mechanism_points(mech, spec)
    runs = [
        AtlasRun("sweep", mech, point, "none", i, value, {**mech_base, **settings})
        for i, (point, value, settings) in enumerate(points)
    ]
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
            AtlasRun("remedy", mech, collapse, remedy, r, value, {**mech_base, **settings, **extra})
        )
    return runs


def _reference_runs(config: Mapping, base: dict) -> list[AtlasRun]:
    """The healthy reference and the candidates: variants of the workflow config."""
    atlas = config["atlas"]
    references = [("healthy", atlas["healthy"])]
    references += [("candidate", v) for v in atlas.get("candidates", [])]
    runs = []
    for i, (stage, variant) in enumerate(references):
        if variant not in variant_names(config):
            raise ValueError(
                f"atlas config: {stage} variant {variant!r} is neither a preset nor in variants"
            )
        settings = {**base, **variant_overrides(config, variant)}
        runs.append(AtlasRun(stage, "", variant, "none", i, None, settings))
    return runs


def atlas_runs(config: Mapping) -> list[AtlasRun]:
    """Every run of the atlas grid (seeds and datasets excluded).

    Parameters
    ----------
    config
        The workflow config with ``defaults``, ``variants`` and ``atlas``.

    Returns
    -------
    list of AtlasRun
        Per mechanism its sweep then its remedies; then the healthy reference and the
        candidates.
    """
    atlas = config["atlas"]
    base = {**config.get("defaults", {}), **_check_settings(atlas.get("base", {}), "base")}
    base.pop("seed", None)
    remedies = atlas.get("remedies", {})
    runs: list[AtlasRun] = []
    for mech, spec in atlas["mechanisms"].items():
        runs += _mechanism_runs(mech, spec, base, remedies)
    runs += _reference_runs(config, base)
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"atlas config: duplicated run names {duplicated}")
    return runs


def run_seeds(config: Mapping, run: AtlasRun) -> list[int]:
    """Seeds of a run: ``sweep_seeds`` for sweeps, ``seeds`` otherwise.

    Parameters
    ----------
    config
        The workflow config with ``atlas``.
    run
        One run of :func:`atlas_runs`.

    Returns
    -------
    list of int
        The seeds.
    """
    atlas = config["atlas"]
    key = "sweep_seeds" if run.stage == "sweep" else "seeds"
    return [int(s) for s in atlas[key]]


def subsample(n_obs: int, n_cells: int | None, seed: int = 0) -> np.ndarray:
    """Sorted rows of a fixed random subset (all rows when ``n_cells`` is 0/None or too big).

    Parameters
    ----------
    n_obs
        Number of rows.
    n_cells
        Size of the subset.
    seed
        Seed of the draw; the default gives every run on one input the same cells.

    Returns
    -------
    numpy.ndarray
        Row indices, increasing.
    """
    if not n_cells or n_cells >= n_obs:
        return np.arange(n_obs)
    return np.sort(np.random.default_rng(seed).choice(n_obs, n_cells, replace=False))


def atlas_jobs(config: Mapping) -> dict[str, list[dict]]:
    """Group the atlas's trainings into jobs, one process each.

    A job is a mechanism's whole sweep (``sweep.<mechanism>``), one remedy of a
    mechanism over the seeds (``remedy.<mechanism>.<remedy>``), or the healthy
    reference over the seeds (``healthy``). Several trainings per process pay the
    import and JIT-compilation cost (numba, in the kNN graph) once.

    Parameters
    ----------
    config
        The workflow config with ``defaults``, ``variants`` and ``atlas``.

    Returns
    -------
    dict
        ``{job name: [run spec, ...]}``; a run spec is a plain dict with the run's
        identifiers, ``settings`` and ``seed``, as
        :func:`scvae.atlas.jobs.run_atlas_job` takes it.
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
