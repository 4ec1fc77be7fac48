"""The count VAE: likelihoods, network blocks, the Pyro model and guide, encoding cells.

Also the estimates on the encoder's posteriors that training and the diagnostics share:
the mutual information under the aggregate posterior (:mod:`scvae.module.aggregate`) and
its tensor helpers (:mod:`scvae.module.tensors`).
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "VAE": "scvae.module.vae",
        "aggregate_mi": "scvae.module.aggregate",
        "VAEConfig": "scvae.module.config",
        "count_distribution": "scvae.module.distributions",
        "encode": "scvae.module.encoding",
        "eval_mode": "scvae.module.encoding",
        "module_device": "scvae.module.encoding",
        "negative_binomial": "scvae.module.distributions",
    },
)
