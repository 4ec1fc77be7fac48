"""Reading and writing data: count formats, checks, batches, h5ad, run files, on-disk CSR."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "check_counts": "scvae.data.checks",
        "check_counts_chunked": "scvae.data.checks",
        "FORMATS": "scvae.data.formats",
        "detect_format": "scvae.data.formats",
        "read_counts": "scvae.data.readers",
        "read_dataset": "scvae.data.batches",
        "read_samples": "scvae.data.batches",
        "read_h5ad": "scvae.data.h5ad",
        "write_h5ad": "scvae.data.h5ad",
        "read_run": "scvae.data.runfiles",
        "write_run": "scvae.data.runfiles",
        "H5CSR": "scvae.data.ondisk",
        "CSRWriter": "scvae.data.ondisk",
        "row_sums": "scvae.data.ondisk",
        "CountBatches": "scvae.data.loaders",
        "counts_matrix": "scvae.data.loaders",
        "synthetic_counts": "scvae.data.synthetic",
        "write_synthetic_h5ad": "scvae.data.synthetic",
        "resample_cells": "scvae.data.synthetic",
        "write_resampled": "scvae.data.synthetic",
    },
)
