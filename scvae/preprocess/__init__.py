"""QC filters and highly variable genes, in memory or streamed from disk."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "preprocess": "scvae.preprocess.memory",
        "effective_settings": "scvae.preprocess.memory",
        "FILTER_SETTINGS": "scvae.preprocess.memory",
        "add_qc_metrics": "scvae.preprocess.qc",
        "mito_genes": "scvae.preprocess.qc",
        "preprocess_h5ad_backed": "scvae.preprocess.streamed",
    },
)
