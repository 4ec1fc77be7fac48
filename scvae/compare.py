"""Compare variants, seeds and baselines of one dataset in a table.

Inputs per run (one variant x seed, or one baseline):

- the metrics JSON of :func:`scvae.stages.cluster.run_cluster` (required): ``status``,
  ``metrics`` (flat), ``train`` (scalar entries of ``uns["scvae"]["train"]``) and
  ``baseline`` (``uns["scvae"]["baseline"]``, non-empty for baselines);
- the diagnostics JSON of the diagnostics stage (optional; absent for baselines):
  ``verdict``, ``verdict_reason``, ``mi``, ``active_units``, ``kl_per_dim``,
  ``kl_total``, ``kl_aggregate``, ``iwae_ll_per_cell``;
- a train JSON (optional) with ``n_latent``, ``epochs``, ``train_seconds``; it
  overrides the ``train`` section of the metrics JSON.

Every missing key becomes ``NaN`` (``""`` for strings), never an error. A run is given
either as a pipeline run folder (:func:`record_from_run_dir`) or as a record mapping
(:func:`collect`); the diagnostics come from the run's ``diagnostics.json`` when there
is one, else from the summary that :func:`scvae.stages.cluster.run_cluster` copies into the metrics
JSON. The ``compare`` stage (:func:`scvae.stages.compare.run_compare`) writes the tables
and draws the comparison figures (:func:`write_figures`).

For data with batches the metrics JSON also holds the scIB metrics
(:func:`scvae.integration.integration_scores`); their columns (:data:`SCIB_COLUMNS`, the
``scib_*`` ones that some run has) follow :data:`EXTRA_COLUMNS` in the per-run table, and
their means and standard deviations over seeds are in the summary.

Ranking score (column ``score``)
--------------------------------
For a dataset with batches whose runs have ``scib_total`` (the scIB total of
bio conservation and batch correction, 0.6/0.4), ``score = scib_total``: a batch-aware
embedding has to keep the cell types apart and mix the batches, and KMeans agreement
alone rewards an embedding that keeps the batches apart too. Otherwise, with labels,
``score = (kmeans_ari + kmeans_nmi) / 2``: KMeans with k = number of
labels is free of the Leiden resolution choice, so variants are compared at equal
cluster counts. Without labels, ``score = silhouette`` of the primary Leiden
clustering on the embedding (raw, in [-1, 1]); it is a weak criterion across
embeddings of different dimension, so read it next to ``n_clusters`` and
``modularity``. A run is *collapsed* as :func:`scvae.diagnostics.verdicts.is_collapsed`
decides: its verdict is ``"collapsed"`` (case-insensitive), or, for a run without a
verdict, one of the verdict's scalar tests fails (MI, total KL, no active unit); a
variant is collapsed when more than half of its seeds are. :func:`summarize` ranks
non-collapsed variants first, each group by mean score, descending; variants without
a score (unavailable baselines) come last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from scvae.diagnostics.verdicts import is_collapsed
from scvae.errors import InputError
from scvae.integration import SCIB_COLUMNS, scib_key
from scvae.plotting import comparison as report
from scvae.utils.atomic import atomic_path

__all__ = [
    "COLUMNS",
    "EXTRA_COLUMNS",
    "FIGURES",
    "METRIC_COLUMNS",
    "SCIB_COLUMNS",
    "SCIB_FIGURE",
    "collect",
    "collect_kl_per_dim",
    "make_records",
    "record_from_run_dir",
    "summarize",
    "write_figures",
    "write_tsv",
]

logger = logging.getLogger(__name__)

#: Columns of :func:`collect`, in order; :data:`EXTRA_COLUMNS` follow them.
COLUMNS = [
    "dataset",
    "variant",
    "seed",
    "n_latent",
    "active_units",
    "kl_total",
    "mi",
    "kl_aggregate",
    "iwae_ll_per_cell",
    "verdict",
    "kmeans_ari",
    "kmeans_nmi",
    "leiden_ari",
    "leiden_nmi",
    "kmeans_ari_sample",
    "leiden_ari_sample",
    "asw_label",
    "knn_purity",
    "train_seconds",
    "epochs",
]
#: ``kind`` is ``"vae"`` or ``"baseline"``, ``status`` is the metrics JSON's status
#: (``"ok"`` or ``"unavailable"``), then label-free metrics of the primary
#: clustering, the ranking ``score`` and the ``collapsed`` flag.
EXTRA_COLUMNS = ["kind", "status", "n_clusters", "silhouette", "modularity", "score", "collapsed"]

#: Numeric columns aggregated over seeds by :func:`summarize`.
METRIC_COLUMNS = [
    "n_latent",
    "active_units",
    "kl_total",
    "mi",
    "kl_aggregate",
    "iwae_ll_per_cell",
    "kmeans_ari",
    "kmeans_nmi",
    "leiden_ari",
    "leiden_nmi",
    "kmeans_ari_sample",
    "leiden_ari_sample",
    "asw_label",
    "knn_purity",
    "n_clusters",
    "silhouette",
    "modularity",
    "train_seconds",
    "epochs",
    "score",
]

_DIAG_NUMERIC = ["active_units", "kl_total", "mi", "kl_aggregate", "iwae_ll_per_cell"]
_CLUSTER_METRICS = [
    "kmeans_ari",
    "kmeans_nmi",
    "leiden_ari",
    "leiden_nmi",
    "kmeans_ari_sample",
    "leiden_ari_sample",
    "asw_label",
    "knn_purity",
    "n_clusters",
    "silhouette",
    "modularity",
]


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def _load(source: str | os.PathLike | Mapping | None, what: str) -> dict:
    """Load a JSON record from a path or an already loaded mapping; ``{}`` for None."""
    if source is None or (isinstance(source, str) and not source):
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{what} JSON {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{what} JSON {path} is not valid JSON: {err}") from err


def _num(value: Any) -> float:
    """Convert to float, NaN for anything missing or non-numeric (JSON null included)."""
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _diagnostics(record: Mapping, metrics_rec: Mapping | None = None) -> dict:
    """The run's diagnostics: its own file if given, else the metrics JSON's summary."""
    diag = _load(record.get("diagnostics"), "diagnostics")
    if diag:
        return diag
    if metrics_rec is None:
        metrics_rec = _load(record.get("metrics"), "metrics")
    return dict(metrics_rec.get("diagnostics") or {})


def _row(record: Mapping) -> dict:
    metrics_rec = _load(record.get("metrics"), "metrics")
    diag = _diagnostics(record, metrics_rec)
    train = {**metrics_rec.get("train", {}), **_load(record.get("train"), "train")}
    baseline = metrics_rec.get("baseline") or {}
    metrics = metrics_rec.get("metrics") or {}

    row: dict[str, Any] = {
        "dataset": str(record.get("dataset", "")),
        "variant": str(record.get("variant", "")),
        "seed": _num(record.get("seed")),
        "n_latent": _num(train.get("n_latent", baseline.get("n_components"))),
        "verdict": str(diag.get("verdict") or ""),
        "train_seconds": _num(train.get("train_seconds", baseline.get("seconds"))),
        "epochs": _num(train.get("epochs", baseline.get("max_epochs"))),
        "kind": "baseline" if baseline else "vae",
        "status": str(metrics_rec.get("status", "ok")),
    }
    row.update({k: _num(diag.get(k)) for k in _DIAG_NUMERIC})
    row.update({k: _num(metrics.get(k)) for k in _CLUSTER_METRICS})
    row.update({k: _num(metrics[k]) for k in SCIB_COLUMNS if k in metrics})
    return row


def _score(df: pd.DataFrame) -> pd.Series:
    labelled = (df["kmeans_ari"] + df["kmeans_nmi"]) / 2
    score = labelled.where(labelled.notna(), df["silhouette"])
    total = scib_key("total")
    if total not in df:
        return score
    # Per dataset, so that one dataset's runs are all ranked on the same scale.
    scib_dataset = df.groupby("dataset", sort=False)[total].transform(lambda s: s.notna().any())
    return df[total].where(scib_dataset, score)


def _scib_columns(df: pd.DataFrame) -> list[str]:
    """The :data:`SCIB_COLUMNS` that some row of ``df`` has a value for, in order."""
    return [c for c in SCIB_COLUMNS if c in df and df[c].notna().any()]


def collect(run_records: Sequence[Mapping]) -> pd.DataFrame:
    """One row per run from its metrics, diagnostics and train records.

    Parameters
    ----------
    run_records
        One mapping per run with ``dataset`` (str), ``variant`` (str), ``seed`` (int),
        ``metrics`` (path or loaded metrics JSON of :func:`scvae.stages.cluster.run_cluster`) and
        optionally ``diagnostics`` and ``train`` (path, loaded mapping, or None).

    Returns
    -------
    pandas.DataFrame
        :data:`COLUMNS`, :data:`EXTRA_COLUMNS`, then the :data:`SCIB_COLUMNS` that
        some run has (none for data without batches); NaN (``""`` for ``verdict``)
        wherever an input lacks the value. Baselines have ``kind == "baseline"`` and
        empty diagnostics; ``n_latent``, ``train_seconds`` and ``epochs`` come from
        the baseline record for them.
    """
    rows = [_row(r) for r in run_records]
    df = pd.DataFrame(rows)
    df = df.reindex(
        columns=[c for c in COLUMNS + EXTRA_COLUMNS if c not in {"score", "collapsed"}]
        + _scib_columns(df)
    )
    df["seed"] = df["seed"].astype("Int64")
    df["score"] = _score(df)
    df["collapsed"] = is_collapsed(
        df["verdict"], mi=df["mi"], kl_total=df["kl_total"], active_units=df["active_units"]
    )
    return df[COLUMNS + EXTRA_COLUMNS + _scib_columns(df)]


def collect_kl_per_dim(run_records: Sequence[Mapping], *, sort_dims: bool = True) -> pd.DataFrame:
    """Per-dimension KL, variants x dimensions, averaged over seeds.

    Latent dimensions are exchangeable, so dimension ``j`` of one seed has nothing to
    do with dimension ``j`` of another; with ``sort_dims`` each run's KL values are
    sorted in decreasing order before averaging, so column ``j`` is "the j-th most
    used dimension". Runs without ``kl_per_dim`` (baselines) are skipped; variants of
    different ``n_latent`` are padded with NaN.

    Parameters
    ----------
    run_records
        As for :func:`collect`.
    sort_dims
        Sort each run's KL decreasingly before averaging.

    Returns
    -------
    pandas.DataFrame
        Index ``variant`` (in first-seen order), columns ``0..max_dim-1``, KL in nats.
    """
    per_variant: dict[str, list[np.ndarray]] = {}
    for record in run_records:
        kl = _diagnostics(record).get("kl_per_dim")
        if not kl:
            continue
        values = np.array([_num(v) for v in kl])
        if sort_dims:
            values = -np.sort(-values)  # NaN last
        per_variant.setdefault(str(record.get("variant", "")), []).append(values)
    if not per_variant:
        return pd.DataFrame(index=pd.Index([], name="variant"))
    width = max(v.size for runs in per_variant.values() for v in runs)
    rows = {}
    for variant, runs in per_variant.items():
        padded = np.full((len(runs), width), np.nan)
        for i, v in enumerate(runs):
            padded[i, : v.size] = v
        with warnings.catch_warnings():
            # all-NaN columns (dims beyond a variant's n_latent) are meant to stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            rows[variant] = np.nanmean(padded, axis=0)
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "variant"
    out.columns.name = (
        "latent dimension (sorted by KL within each run)" if sort_dims else "latent dimension"
    )
    return out


# --------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------


def _verdict_counts(verdicts: pd.Series) -> str:
    counts = verdicts[verdicts != ""].value_counts()
    return ", ".join(f"{v} x{n}" for v, n in sorted(counts.items()))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per dataset and variant, ranked.

    See the module docstring for the score and the ranking. The standard deviation is
    the sample one (ddof=1), NaN with a single seed.

    Parameters
    ----------
    df
        Output of :func:`collect`.

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, variant), sorted by dataset then ``rank`` (1 = best):
        ``dataset``, ``variant``, ``rank``, ``kind``, ``n_seeds``, ``n_ok``,
        ``n_collapsed``, ``collapsed``, ``verdicts`` (e.g. ``"collapsed x1, ok x2"``),
        then ``<m>_mean`` and ``<m>_sd`` for each of :data:`METRIC_COLUMNS` and of the
        scIB columns of ``df``.
    """
    groups = df.groupby(["dataset", "variant"], sort=False, dropna=False)
    base = groups.agg(
        kind=("kind", "first"),
        n_seeds=("variant", "size"),
        n_ok=("status", lambda s: int((s == "ok").sum())),
        n_collapsed=("collapsed", "sum"),
        verdicts=("verdict", _verdict_counts),
    )
    base["n_collapsed"] = base["n_collapsed"].astype(int)
    base["collapsed"] = base["n_collapsed"] > base["n_seeds"] / 2
    columns = METRIC_COLUMNS + _scib_columns(df)
    numeric = df[["dataset", "variant", *columns]].copy()
    numeric[columns] = numeric[columns].astype(float)
    stats = numeric.groupby(["dataset", "variant"], sort=False, dropna=False)[columns]
    mean, sd = stats.mean(), stats.std(ddof=1)
    pairs = {}
    for m in columns:
        pairs[f"{m}_mean"], pairs[f"{m}_sd"] = mean[m], sd[m]
    out = base.join(pd.DataFrame(pairs)).reset_index()

    out = out.sort_values(
        ["dataset", "collapsed", "score_mean"],
        ascending=[True, True, False],
        na_position="last",
        kind="stable",
    )
    # NaN scores go last within each collapsed group above; push them below everything.
    out["_noscore"] = out["score_mean"].isna()
    out = out.sort_values(["dataset", "_noscore"], kind="stable").drop(columns="_noscore")
    out.insert(2, "rank", out.groupby("dataset").cumcount() + 1)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------
# file-level step
# --------------------------------------------------------------------------------------


def make_records(
    variants: Sequence[str],
    seeds: Sequence[int],
    metrics_json: Sequence[str | os.PathLike],
    diagnostics_json: Sequence[str | os.PathLike | None] | None = None,
    train_json: Sequence[str | os.PathLike | None] | None = None,
) -> list[dict]:
    """Zip parallel lists (as a Snakemake rule has them) into run records.

    Parameters
    ----------
    variants, seeds, metrics_json
        One entry per run.
    diagnostics_json, train_json
        One entry per run (``None`` or ``""`` for none, e.g. for baselines), or
        ``None`` for no such files at all.

    Returns
    -------
    list of dict
        Records for :func:`collect` (without ``dataset``; the ``compare`` stage adds it).
    """
    n = len(variants)
    diagnostics_json = [None] * n if diagnostics_json is None else list(diagnostics_json)
    train_json = [None] * n if train_json is None else list(train_json)
    lengths = {len(seeds), len(metrics_json), len(diagnostics_json), len(train_json)}
    if lengths != {n}:
        raise InputError(
            "variants, seeds, metrics_json, diagnostics_json and train_json must have the "
            f"same length, got {n}, {len(seeds)}, {len(metrics_json)}, "
            f"{len(diagnostics_json)}, {len(train_json)}"
        )
    return [
        {"variant": v, "seed": s, "metrics": m, "diagnostics": d, "train": t}
        for v, s, m, d, t in zip(
            variants, seeds, metrics_json, diagnostics_json, train_json, strict=True
        )
    ]


def write_tsv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table as TSV atomically; NaN as an empty field.

    Parameters
    ----------
    df
        The table.
    path
        Destination file.
    """
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="", float_format="%.6g")


def record_from_run_dir(run_dir: str | os.PathLike) -> dict:
    """Run record for a pipeline run folder ``results/<dataset>/<variant>/seed<k>/``.

    Parameters
    ----------
    run_dir
        Folder with ``metrics.json`` (required) and, when present,
        ``diagnostics.json``, ``history.tsv`` (training curves) and ``final.h5ad``
        (UMAP). The variant is the parent folder's name and the seed comes from
        ``seed<k>``; a folder not named so gives the folder's name and no seed.

    Returns
    -------
    dict
        Record for :func:`collect` and :func:`write_figures`.
    """
    run_dir = Path(run_dir)
    match = re.fullmatch(r"seed(\d+)", run_dir.name)
    optional = {"diagnostics": "diagnostics.json", "history": "history.tsv", "final": "final.h5ad"}
    record: dict[str, Any] = {
        "variant": run_dir.parent.name if match else run_dir.name,
        "seed": int(match.group(1)) if match else None,
        "metrics": run_dir / "metrics.json",
    }
    for key, name in optional.items():
        record[key] = run_dir / name if (run_dir / name).is_file() else None
    return record


_BATCH_KEY = "uns/scvae/preprocess/batch_key"
_SCIB_BATCH = f"uns/scvae/cluster/metrics/{scib_key('batch')}"


def _umap_view(path: str | os.PathLike) -> ad.AnnData:
    """``obs`` and ``obsm["X_umap"]`` of an h5ad, without loading the counts.

    Also the batch column (``uns["scvae"]["preprocess"]["batch_key"]``) and the scIB
    batch-correction score, where the file has them, in the same places of ``uns``.
    """
    with h5py.File(path, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        obsm = {"X_umap": ad.io.read_elem(f["obsm/X_umap"])} if "obsm/X_umap" in f else {}
        uns: dict[str, Any] = {}
        if _BATCH_KEY in f:
            uns["preprocess"] = {"batch_key": str(ad.io.read_elem(f[_BATCH_KEY]))}
        if _SCIB_BATCH in f:
            uns["cluster"] = {"metrics": {scib_key("batch"): ad.io.read_elem(f[_SCIB_BATCH])}}
    return ad.AnnData(obs=obs, obsm=obsm, uns={"scvae": uns})


def _history(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    return source if isinstance(source, pd.DataFrame) else pd.read_csv(source, sep="\t")


#: File names of the comparison figures in ``figure_dir``.
FIGURES = ("kl_heatmap", "mi_au", "scores", "umap_grid", "training_curves")
#: File name of the scIB table, drawn for datasets with scIB metrics only.
SCIB_FIGURE = "scib_table"


def write_figures(
    records: Sequence[Mapping],
    runs: pd.DataFrame,
    figure_dir: str | os.PathLike,
    *,
    label_key: str = "label",
    cluster_key: str = "scvae_leiden",
) -> list[Path]:
    """Draw the comparison figures of one dataset into ``figure_dir``.

    Writes ``<name>.png`` for each of :data:`FIGURES`: the KL heatmap (variants x
    dimensions, seeds averaged after sorting), MI and active units, ARI/NMI bars,
    the UMAP grid (one row per variant, its lowest seed, from ``final``; with a batch
    column for data with batches) and the training curves (one line per run with a
    ``history``); and, when the runs have scIB metrics, :data:`SCIB_FIGURE` (every
    run x the scIB metrics and aggregates).

    Parameters
    ----------
    records
        Run records (:func:`record_from_run_dir`); ``history`` (path or DataFrame)
        and ``final`` (h5ad path) are optional.
    runs
        Output of :func:`collect` for the same records.
    figure_dir
        Output folder (created if missing).
    label_key, cluster_key
        ``obs`` columns coloured in the UMAP grid.

    Returns
    -------
    list of Path
        The figures written.
    """
    out = Path(figure_dir)
    paths = {name: out / f"{name}.png" for name in FIGURES}
    report.plot_kl_heatmap(collect_kl_per_dim(records), paths["kl_heatmap"])
    report.plot_mi_au(runs, paths["mi_au"])
    report.plot_scores(runs, paths["scores"])

    first_final: dict[str, Mapping] = {}
    for record in sorted(records, key=lambda r: _num(r.get("seed"))):
        if record.get("final") is not None:
            first_final.setdefault(str(record.get("variant", "")), record)
    order = [v for v in dict.fromkeys(runs["variant"]) if v in first_final]
    baselines = set(runs.loc[runs["kind"] == "baseline", "variant"])
    order = [v for v in order if v not in baselines] + [v for v in order if v in baselines]
    adatas = {v: _umap_view(first_final[v]["final"]) for v in order}
    batch_keys = [
        a.uns["scvae"]["preprocess"]["batch_key"]
        for a in adatas.values()
        if "preprocess" in a.uns["scvae"]
    ]
    report.plot_umap_grid(
        adatas,
        paths["umap_grid"],
        label_key=label_key,
        cluster_key=cluster_key,
        batch_key=batch_keys[0] if batch_keys else None,
    )
    if _scib_columns(runs):
        paths[SCIB_FIGURE] = out / f"{SCIB_FIGURE}.png"
        report.plot_scib_table(runs, paths[SCIB_FIGURE])

    histories = {
        f"{r.get('variant', '')} s{r.get('seed')}": _history(r["history"])
        for r in records
        if r.get("history") is not None
    }
    report.plot_training_curves(histories, paths["training_curves"])
    return list(paths.values())
