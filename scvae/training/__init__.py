"""Fitting the VAE: settings, objective, KL schedules, the loop and its checkpoints."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "train": "scvae.training.loop",
        "run_train": "scvae.training.loop",
        "TrainConfig": "scvae.training.settings",
        "split_settings": "scvae.training.settings",
        "KLSchedule": "scvae.training.schedules",
        "FreeBitsELBO": "scvae.training.objective",
    },
)
