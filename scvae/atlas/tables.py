"""Tables of the collapse atlas: every run and seed, means over seeds, the best remedies.

The inputs are the run records of :func:`scvae.atlas.jobs.run_atlas_job` (one dict per
run and seed). :func:`collect` makes them one table; :func:`summarize` and
:func:`remedy_table` reduce it; :mod:`scvae.atlas.figures` draws it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from scvae.atlas.grid import STAGES
from scvae.diagnostics.verdicts import is_collapsed
from scvae.utils.jsonio import read_json

__all__ = [
    "RESTORE_METRIC",
    "RESTORE_TOLERANCE",
    "SCALAR_COLUMNS",
    "collect",
    "read_records",
    "remedy_table",
    "summarize",
]

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

#: The score that decides whether a remedy restores the healthy model: KMeans ARI on a
#: posterior draw, which a collapsed code cannot fake (see posterior_sample_scores).
RESTORE_METRIC = "kmeans_ari_sample"
#: A remedy restores the model when its mean score is within this of the healthy mean.
RESTORE_TOLERANCE = 0.05


def collect(records: list[Mapping]) -> pd.DataFrame:
    """One row per run and seed with the scalar columns (:data:`SCALAR_COLUMNS`).

    Also ``collapsed`` (:func:`scvae.diagnostics.verdicts.is_collapsed`: the run's
    verdict, or its scalar tests for a record without one) and, per dataset, ``d_kmeans_ari``,
    ``d_leiden_ari``, ``d_kmeans_ari_sample`` and ``d_leiden_ari_sample``: the change
    from the healthy reference's mean over its seeds.

    Parameters
    ----------
    records
        Run records of :func:`scvae.atlas.jobs.run_atlas_job`.

    Returns
    -------
    pandas.DataFrame
        Sorted by dataset, stage (in :data:`scvae.atlas.grid.STAGES` order), mechanism,
        order and seed.
    """
    df = pd.DataFrame([{c: r.get(c) for c in SCALAR_COLUMNS} for r in records])
    df["collapsed"] = is_collapsed(
        df["verdict"], mi=df["mi"], kl_total=df["kl_total"], active_units=df["active_units"]
    )
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
    """Mean and standard deviation over seeds per dataset and run.

    Parameters
    ----------
    df
        Output of :func:`collect`.

    Returns
    -------
    pandas.DataFrame
        ``<metric>_mean`` and ``<metric>_sd`` per run, with ``n_seeds`` and
        ``n_collapsed``.
    """
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


def remedy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and mechanism: the collapse, the healthy reference and the best remedy.

    The best remedy is the one with the highest mean :data:`RESTORE_METRIC` over seeds;
    it ``restores`` the model when that mean is within :data:`RESTORE_TOLERANCE` of the
    healthy reference's and its code is collapsed on no seed (the ``collapsed`` column
    of :func:`collect`).

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
    """Read and concatenate the record lists written by :func:`scvae.atlas.jobs.run_atlas_job`.

    Parameters
    ----------
    paths
        The jobs' JSON files.

    Returns
    -------
    list of dict
        Their records, in file order.
    """
    return [record for p in paths for record in read_json(p)]
