"""scvae: collapse-free variational autoencoders for single-cell RNA-seq counts."""

__version__ = "0.1.0"
