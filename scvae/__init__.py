"""scvae: collapse-free variational autoencoders for single-cell RNA-seq counts.

The names below load on first use, so ``import scvae`` (and parsing the Snakefile) does
not import torch, pyro or scanpy.
"""

from scvae.utils.lazy import lazy_attributes

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "SCVAE": "scvae.model",
        # The scanpy-style namespaces: scvae.pp, scvae.tl, scvae.pl.
        "pp": "scvae.pp",
        "tl": "scvae.tl",
        "pl": "scvae.pl",
        "train": "scvae.model",
        "read_counts": "scvae.data.readers",
        "read_h5ad": "scvae.data.h5ad",
        "read_run": "scvae.decode",
    },
)
