"""scvae: collapse-free variational autoencoders for single-cell RNA-seq counts."""

from scvae.model import SCVAE
from scvae.train import train

__version__ = "0.1.0"
__all__ = ["SCVAE", "train"]
