"""Fitting the VAE: settings, objective, KL schedules and budget, the loop, its checkpoints.

The loop (:mod:`~scvae.training.loop`) draws on the aggressive phase
(:mod:`~scvae.training.aggressive`) and the calibrated dispersion
(:mod:`~scvae.training.calibration`); the workflow's stage is :mod:`scvae.stages.train`.
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "fit": "scvae.training.loop",
        "FitResult": "scvae.training.loop",
        "TrainConfig": "scvae.training.settings",
        "TrainState": "scvae.training.checkpoint",
        "split_settings": "scvae.training.settings",
        "KLSchedule": "scvae.training.schedules",
        "FreeBitsELBO": "scvae.training.objective",
    },
    moved={
        "train": "use scvae.train(adata, ...) (a trained scvae.SCVAE, recommended settings "
        "by default), or scvae.training.fit(adata, settings) for the bare training loop",
    },
)
