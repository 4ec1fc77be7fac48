"""The collapse atlas, an experiment at the edge: nothing in the core imports it.

A grid of trainings (mechanisms x remedies x datasets), its runs, tables and figures.
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "atlas_runs": "scvae.atlas.core",
        "atlas_jobs": "scvae.atlas.core",
        "run_atlas_job": "scvae.atlas.core",
        "collect": "scvae.atlas.core",
        "summarize": "scvae.atlas.core",
        "remedy_table": "scvae.atlas.core",
        "run_atlas_report": "scvae.atlas.core",
        "write_atlas_figures": "scvae.atlas.figures",
    },
)
