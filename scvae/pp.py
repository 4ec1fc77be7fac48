"""Preprocessing, scanpy's way: ``scvae.pp``.

========================  =============================================================
``preprocess``            QC filters and highly variable genes, raw counts kept
``add_qc_metrics``        scanpy's QC metrics of the raw counts, with mitochondrial genes
========================  =============================================================

Each function takes ``adata`` first and its options by keyword, changes ``adata`` in
place and returns None, or with ``copy=True`` returns a changed copy and leaves ``adata``
as it was; its Returns section names every key it writes. The names load on first use:
``import scvae.pp`` imports neither scanpy nor torch.
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "preprocess": "scvae.preprocess.memory",
        "add_qc_metrics": "scvae.preprocess.qc",
    },
)
