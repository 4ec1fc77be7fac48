"""Pyro models."""

from scvae.models.vae import VAE, VAEConfig

__all__ = ["VAE", "VAEConfig"]
