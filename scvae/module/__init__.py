"""The count VAE: likelihoods, network blocks, and the Pyro model and guide."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "VAE": "scvae.module.vae",
        "VAEConfig": "scvae.module.config",
        "count_distribution": "scvae.module.distributions",
        "negative_binomial": "scvae.module.distributions",
    },
)
