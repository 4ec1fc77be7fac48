"""Reading counts: formats, input checks, on-disk CSR, minibatch loaders, synthetic data."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "FORMATS": "scvae.data.readers",
        "check_counts": "scvae.data.readers",
        "detect_format": "scvae.data.readers",
        "read_counts": "scvae.data.readers",
        "read_h5ad": "scvae.data.readers",
        "write_h5ad": "scvae.data.readers",
        "H5CSR": "scvae.data.ondisk",
        "CSRWriter": "scvae.data.ondisk",
        "row_sums": "scvae.data.ondisk",
        "CountBatches": "scvae.data.loaders",
        "counts_matrix": "scvae.data.loaders",
        "synthetic_counts": "scvae.data.synthetic",
        "write_synthetic_h5ad": "scvae.data.synthetic",
    },
)
