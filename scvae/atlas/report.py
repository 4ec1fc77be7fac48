"""The atlas report stage: the records of every job to tables and figures.

:func:`run_atlas_report` reads the records of :func:`scvae.atlas.jobs.run_atlas_job`,
writes the tables of :mod:`scvae.atlas.tables` as TSV and draws the figures of
:mod:`scvae.atlas.figures`.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from scvae.atlas.figures import write_atlas_figures
from scvae.atlas.tables import collect, read_records, remedy_table, summarize
from scvae.utils.atomic import atomic_path

__all__ = ["run_atlas_report"]

log = logging.getLogger(__name__)


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
        Output TSV paths (written atomically): :func:`scvae.atlas.tables.collect` and
        :func:`scvae.atlas.tables.summarize`.
    remedies
        Where the remedy table (:func:`scvae.atlas.tables.remedy_table`) goes (None:
        not written).
    figure_dir
        Folder for the figures (:func:`scvae.atlas.figures.write_atlas_figures`).

    Returns
    -------
    pandas.DataFrame
        The per-run table.
    """
    records = read_records(list(inputs))
    df = collect(records)
    outputs = [(df, table), (summarize(df), summary)]
    if remedies is not None:
        outputs.append((remedy_table(df), remedies))
    for frame, path in outputs:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    if figure_dir is not None:
        os.makedirs(figure_dir, exist_ok=True)
        write_atlas_figures(records, figure_dir)
    log.info("wrote %s (%d runs) and %s", table, len(df), summary)
    return df
