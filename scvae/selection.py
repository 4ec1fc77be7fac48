"""Choosing settings out of sample: leave one dataset out.

Settings chosen on the datasets they are then scored on win there by construction. Here
the choice for each dataset is made on the others only: for a held-out dataset ``D``,
the candidate with the best mean criterion over every other dataset is chosen, and its
scores on ``D`` are what gets reported. The criterion needs labels on the other
datasets only, never on ``D``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["candidate_means", "leave_one_dataset_out"]


def candidate_means(
    records: pd.DataFrame, metrics: Sequence[str], *, method: str = "method"
) -> pd.DataFrame:
    """Mean, standard deviation and seed count of each metric per dataset and method.

    Parameters
    ----------
    records
        One row per run: ``dataset``, the ``method`` column, ``seed`` and the metrics.
    metrics
        Metric columns to summarize.
    method
        Column naming the method or candidate.

    Returns
    -------
    pandas.DataFrame
        Indexed by (dataset, method): ``<metric>_mean``, ``<metric>_sd`` (sample s.d.,
        NaN for one seed) and ``n_seeds``.
    """
    grouped = records.groupby(["dataset", method], sort=True)
    parts = [grouped[list(metrics)].mean().add_suffix("_mean")]
    parts.append(grouped[list(metrics)].std(ddof=1).add_suffix("_sd"))
    parts.append(grouped["seed"].nunique().rename("n_seeds"))
    return pd.concat(parts, axis=1)


def leave_one_dataset_out(
    records: pd.DataFrame,
    candidates: Sequence[str],
    criterion: Sequence[str],
    *,
    method: str = "method",
) -> pd.DataFrame:
    """For each dataset, the candidate chosen on the other datasets, scored on it.

    The selection score of a candidate on a set of datasets is the mean over those
    datasets of its seed-mean criterion, where the criterion is the mean of the
    ``criterion`` columns (e.g. KMeans ARI and best Leiden ARI). A candidate must have
    runs on every dataset to be chosen; ties go to the earlier candidate in
    ``candidates``.

    Parameters
    ----------
    records
        One row per run: ``dataset``, the ``method`` column, ``seed`` and metrics.
    candidates
        The methods to choose among, in order of preference on ties.
    criterion
        Metric columns averaged into the selection criterion (higher is better).
    method
        Column naming the method.

    Returns
    -------
    pandas.DataFrame
        One row per dataset: ``dataset``, ``chosen``, ``selection_score`` (the chosen
        candidate's score on the other datasets) and, from the chosen candidate's runs
        on the held-out dataset, ``<metric>_mean``/``_sd`` for every numeric metric
        column and ``n_seeds``.

    Raises
    ------
    ValueError
        If fewer than two datasets hold runs of the candidates, or no candidate has
        runs on every dataset.
    """
    runs = records[records[method].isin(candidates)].copy()
    runs["_criterion"] = runs[list(criterion)].mean(axis=1)
    datasets = sorted(records["dataset"].unique())
    if len(datasets) < 2:
        raise ValueError(f"leave-one-dataset-out needs at least 2 datasets, got {datasets}")
    per_dataset = (
        runs.groupby(["dataset", method])["_criterion"].mean().unstack(method).reindex(datasets)
    )
    complete = [c for c in candidates if c in per_dataset and per_dataset[c].notna().all()]
    if not complete:
        raise ValueError(f"no candidate has runs on every dataset ({datasets})")
    numeric = [
        c
        for c in records.columns
        if c not in ("dataset", method, "seed") and pd.api.types.is_numeric_dtype(records[c])
    ]
    summary = candidate_means(records, numeric, method=method)
    rows = []
    for held_out in datasets:
        others = per_dataset.drop(index=held_out)[complete].mean(axis=0)
        # idxmax returns the first maximum: ties go to the earlier candidate.
        chosen = str(others.idxmax())
        row = {"dataset": held_out, "chosen": chosen, "selection_score": float(others[chosen])}
        row.update(summary.loc[(held_out, chosen)].to_dict())
        rows.append(row)
    out = pd.DataFrame(rows)
    out["n_seeds"] = out["n_seeds"].astype(np.int64)
    return out
