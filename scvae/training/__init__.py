"""Fitting the VAE: settings, objective, KL schedules, the loop, its checkpoints and stage.

The loop (:mod:`~scvae.training.loop`) draws on the aggressive phase
(:mod:`~scvae.training.aggressive`) and the calibrated dispersion
(:mod:`~scvae.training.calibration`); :mod:`~scvae.training.run` is the workflow's stage.
"""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "train": "scvae.training.loop",
        "run_train": "scvae.training.run",
        "TrainConfig": "scvae.training.settings",
        "TrainState": "scvae.training.checkpoint",
        "split_settings": "scvae.training.settings",
        "KLSchedule": "scvae.training.schedules",
        "FreeBitsELBO": "scvae.training.objective",
    },
)
