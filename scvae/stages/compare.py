"""The ``compare`` stage: the runs of one dataset in; the comparison tables and figures out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from scvae.compare import collect, record_from_run_dir, summarize, write_figures, write_tsv
from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

logger = logging.getLogger(__name__)


def run_compare(
    dataset: str,
    runs: Sequence[str | os.PathLike | Mapping],
    out_tsv: str | os.PathLike,
    out_summary_tsv: str | os.PathLike,
    *,
    figure_dir: str | os.PathLike | None = None,
    notes: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the per-run table and the ranked summary of a dataset; write TSVs and figures.

    Parameters
    ----------
    dataset
        Dataset name, written in the ``dataset`` column of every row.
    runs
        Run folders (see :func:`scvae.compare.record_from_run_dir`) or run records as
        for :func:`scvae.compare.collect` (``dataset`` is set here;
        :func:`scvae.compare.make_records` builds them from parallel file lists).
    out_tsv
        Per-run table (:func:`scvae.compare.collect`).
    out_summary_tsv
        Per-variant summary (:func:`scvae.compare.summarize`).
    figure_dir
        Folder for the comparison figures (:func:`scvae.compare.write_figures`); none when None.
    notes
        Remarks for the report (for example a skipped baseline); logged and, with a
        ``figure_dir``, written one per line to ``figure_dir/notes.txt``.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(runs, summary)``.
    """
    if not runs:
        raise InputError(f"no runs to compare for dataset {dataset!r}")
    records = [
        {**(r if isinstance(r, Mapping) else record_from_run_dir(r)), "dataset": dataset}
        for r in runs
    ]
    table = collect(records)
    summary = summarize(table)
    write_tsv(table, out_tsv)
    write_tsv(summary, out_summary_tsv)
    for note in notes:
        logger.warning("%s: %s", dataset, note)
    if figure_dir is not None:
        write_figures(records, table, figure_dir)
        if notes:
            with atomic_path(Path(figure_dir) / "notes.txt") as tmp:
                tmp.write_text("".join(f"{n}\n" for n in notes))
    best = summary.iloc[0]
    logger.info(
        "%s: %d runs of %d variants -> %s, %s; best: %s (score %.4g)",
        dataset,
        len(table),
        len(summary),
        out_tsv,
        out_summary_tsv,
        best["variant"],
        best["score_mean"],
    )
    return table, summary
