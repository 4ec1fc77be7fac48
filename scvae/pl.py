"""Figures, scanpy's way: ``scvae.pl``.

========================  =============================================================
``qc``                    counts, genes and mitochondrial fraction per cell, thresholds
``umap``                  UMAP by cell-type label, batch and Leiden cluster
``marker_dotplot``        the top marker genes per group (after ``scvae.tl.rank_markers``)
``known_marker_dotplot``  known marker genes of cell types, by label and by cluster
``kl_per_dim``            KL and mutual information per latent dimension
``sensitivity_vs_kl``     decoder sensitivity against KL per dimension
``jtj_spectrum``          the spectrum of the decoder's J^T J
``joint_umap``            reference and query in one UMAP (after ``scvae.tl.ingest``)
========================  =============================================================

Each function takes the data first and its options by keyword, returns the
:class:`matplotlib.figure.Figure` and, with ``save="path.png"``, also writes it (at the
package's DPI, atomically). There is no ``show``: the figures are built without pyplot,
so they neither change the matplotlib backend nor pile up in pyplot's registry; a
notebook shows the returned figure as the cell's result, and a script saves it. The
diagnostics figures take the dictionary of :func:`scvae.diagnostics.diagnose` or an
AnnData that holds it in ``uns["scvae"]["diagnostics"]``. The names load on first use:
``import scvae.pl`` imports neither matplotlib, scanpy nor torch.
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "qc": "scvae.plotting.qc",
        "umap": "scvae.plotting.comparison",
        "marker_dotplot": "scvae.markers",
        "known_marker_dotplot": "scvae.markers",
        "kl_per_dim": "scvae.plotting.diagnostics",
        "sensitivity_vs_kl": "scvae.plotting.diagnostics",
        "jtj_spectrum": "scvae.plotting.diagnostics",
        "joint_umap": "scvae.plotting.mapping",
    },
)
