"""The collapse atlas, an experiment at the edge: nothing in the core imports it.

A grid of trainings (mechanisms x remedies x datasets): the grid
(:mod:`scvae.atlas.grid`), one job's trainings (:mod:`scvae.atlas.jobs`), the tables
(:mod:`scvae.atlas.tables`), the figures (:mod:`scvae.atlas.figures`) and the report stage
that writes both (:mod:`scvae.atlas.report`).
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "AtlasRun": "scvae.atlas.grid",
        "atlas_runs": "scvae.atlas.grid",
        "atlas_jobs": "scvae.atlas.grid",
        "run_atlas_job": "scvae.atlas.jobs",
        "collect": "scvae.atlas.tables",
        "summarize": "scvae.atlas.tables",
        "remedy_table": "scvae.atlas.tables",
        "read_records": "scvae.atlas.tables",
        "write_atlas_figures": "scvae.atlas.figures",
        "run_atlas_report": "scvae.atlas.report",
    },
)
