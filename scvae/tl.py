"""Tools, scanpy's way: ``scvae.tl``.

========================  =============================================================
``cluster``               kNN graph, Leiden clusters and UMAP of an embedding
``score``                 scores of an embedding and its clusters against labels
``rank_markers``          marker genes of groups of cells (Wilcoxon)
``ingest``                new cells into a trained model's latent space, labels transferred
``pca``                   PCA of the log-normalized counts (baseline)
``harmony``               Harmony on that PCA, corrected for batches (baseline)
``scvi``                  scVI's latent means (baseline; needs scvi-tools)
========================  =============================================================

Each function takes ``adata`` first and its options by keyword, writes its results
into ``adata`` (under ``key_added`` where the key is the caller's to choose) and returns
None, or with ``copy=True`` returns a changed copy and leaves ``adata`` as it was; its
Returns section names every key it writes. ``score`` also returns the metrics it
stores, as they are its result. The names load on first use: ``import scvae.tl``
imports neither scanpy nor torch.
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "cluster": "scvae.clustering",
        "score": "scvae.scores",
        "rank_markers": "scvae.markers",
        "ingest": "scvae.mapping",
        "pca": "scvae.baseline",
        "harmony": "scvae.baseline",
        "scvi": "scvae.baseline",
    },
)
