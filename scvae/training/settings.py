"""Training settings and the split of a flat settings dict into model and training parts."""

from __future__ import annotations

import hashlib
import json
import numbers
import typing
from dataclasses import asdict, dataclass, fields

from scvae.module.config import DATA_FIELDS, VAEConfig
from scvae.training.schedules import SCHEDULES


@dataclass
class TrainConfig:
    """How a :class:`~scvae.module.VAE` is fitted.

    Attributes
    ----------
    max_epochs
        Upper bound on passes over the training cells.
    max_cells
        Upper bound on the training cells seen, summed over epochs (0: ``max_epochs``
        only). Training ends at the first step that reaches it, mid-epoch if need be.
        A budget in cells is the same amount of optimizer work at any dataset size, so
        a large dataset trains for fewer epochs (scvi-tools' rule of
        ``min(400, 8e6 / cells)`` epochs is about 8 million cells seen).
    batch_size
        Cells per minibatch (capped at the number of training cells); at least 2, since
        batch normalization needs 2 cells per batch.
    lr, weight_decay, eps
        Adam settings (``eps`` as in scvi-tools, larger than torch's default).
    clip_norm
        Gradient-norm clipping threshold (0 = off).
    beta
        Full KL weight.
    kl_schedule
        ``constant``, ``linear``, ``sigmoid`` or ``cyclical`` (see :mod:`scvae.training.schedules`).
    warmup_fraction
        Share of all planned steps (``max_epochs``, or fewer under ``max_cells``) of the
        linear/sigmoid warm-up.
    warmup_cells
        Longest linear/sigmoid warm-up in training cells seen (0: no bound). The warm-up
        ends after ``min(warmup_fraction x planned steps, S)`` steps, with ``S`` the
        first step at which ``warmup_cells`` cells have been seen: the same number of
        cells whatever the batch size, so a large dataset warms up in fewer epochs,
        while a dataset too small to see that many cells keeps its ``warmup_fraction``
        (a warm-up it can finish within ``max_epochs``).
    n_cycles, cycle_ratio
        Cyclical schedule settings.
    free_bits
        Floor lambda (nats) on the batch-mean KL of each latent dimension.
    aggressive_epochs
        Aggressive inference-network training (He et al. 2019, "Lagging inference
        networks"): for up to this many epochs, every decoder step is preceded by
        encoder-only steps on fresh minibatches until the encoder loss stops improving
        (at most ``aggressive_steps``). The phase ends earlier when the mutual
        information of the validation cells stops increasing. 0 turns it off.
    aggressive_steps
        Most encoder-only steps per decoder step in the aggressive phase.
    calibrated_dispersion
        Set the per-gene inverse dispersion at every step from the current fit instead
        of learning it by gradient descent: a moving average (in log space) of the
        method-of-moments estimate ``mean(mu^2) / mean((x - mu)^2 - mu)`` over the
        minibatch, with ``mu`` the decoder's means at the posterior means (a
        "calibrated decoder", Rybkin et al. 2021). A dispersion learned by small steps
        lags behind the fit; started far too large it mutes the reconstruction term
        and the code collapses before it recovers (the vicious cycle). Needs
        ``dispersion: gene`` (or ``gene-batch``: each batch's row from its cells in the
        minibatch) and a learned NB/ZINB dispersion.
    val_fraction
        Share of cells held out for validation and early stopping.
    val_every_cells
        Validate each time training has seen another ``val_every_cells`` cells (at the
        first step that reaches each multiple of it, mid-epoch if need be), and once more
        when training ends; 0, or a value of at least one epoch's training cells: at the
        end of every epoch. Each validation is a row of the history.
    val_max_cells
        Validate on a fixed random subsample of at most this many of the held-out cells,
        drawn once from ``seed`` (0: all of them). The held-out cells stay out of
        training either way.
    early_stopping, patience, min_delta
        Stop when the validation ELBO has not improved by ``min_delta`` for ``patience``
        validations (epochs, when ``val_every_cells`` is 0); only counted once the KL
        warm-up has ended.
    seed
        Seed for the split, the batches, torch, numpy and Pyro.
    device
        ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    checkpoint_every
        Epochs between checkpoints (when a checkpoint directory is given).
    threads
        torch intra-op threads (0 = leave torch's choice).
    """

    max_epochs: int = 150
    max_cells: int = 0
    batch_size: int = 512
    lr: float = 4e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    clip_norm: float = 10.0
    beta: float = 1.0
    kl_schedule: str = "constant"
    warmup_fraction: float = 0.0
    warmup_cells: int = 0
    n_cycles: int = 4
    cycle_ratio: float = 0.5
    free_bits: float = 0.0
    aggressive_epochs: int = 0
    aggressive_steps: int = 20
    calibrated_dispersion: bool = False
    val_fraction: float = 0.1
    val_every_cells: int = 0
    val_max_cells: int = 0
    early_stopping: bool = True
    patience: int = 20
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 10
    threads: int = 0

    def __post_init__(self) -> None:
        checks = {
            "max_epochs": (self.max_epochs >= 1, "must be >= 1"),
            "max_cells": (self.max_cells >= 0, "must be >= 0 (0: max_epochs only)"),
            "batch_size": (
                self.batch_size >= 2,
                "must be >= 2 (batch normalization needs 2 cells per batch)",
            ),
            "lr": (self.lr > 0, "must be > 0"),
            "weight_decay": (self.weight_decay >= 0, "must be >= 0"),
            "eps": (self.eps > 0, "must be > 0"),
            "clip_norm": (self.clip_norm >= 0, "must be >= 0 (0 turns clipping off)"),
            "beta": (self.beta >= 0, "must be >= 0"),
            "free_bits": (self.free_bits >= 0, "must be >= 0 nats (0 turns free bits off)"),
            "aggressive_epochs": (self.aggressive_epochs >= 0, "must be >= 0 (0 turns it off)"),
            "aggressive_steps": (self.aggressive_steps >= 1, "must be >= 1"),
            "val_fraction": (0 <= self.val_fraction < 1, "must be in [0, 1)"),
            "warmup_fraction": (0 <= self.warmup_fraction <= 1, "must be in [0, 1]"),
            "warmup_cells": (self.warmup_cells >= 0, "must be >= 0 (0: warmup_fraction only)"),
            "val_every_cells": (self.val_every_cells >= 0, "must be >= 0 (0: every epoch)"),
            "val_max_cells": (self.val_max_cells >= 0, "must be >= 0 (0: all held-out cells)"),
            "n_cycles": (self.n_cycles >= 1, "must be >= 1"),
            "cycle_ratio": (0 < self.cycle_ratio <= 1, "must be in (0, 1]"),
            "patience": (self.patience >= 1, "must be >= 1"),
            "min_delta": (self.min_delta >= 0, "must be >= 0"),
            "seed": (self.seed >= 0, "must be >= 0"),
            "checkpoint_every": (self.checkpoint_every >= 1, "must be >= 1"),
            "threads": (self.threads >= 0, "must be >= 0 (0 leaves torch's choice)"),
        }
        for key, (ok, requirement) in checks.items():
            if not ok:
                raise ValueError(
                    f"training setting {key}={getattr(self, key)!r} is out of range: {requirement}"
                )
        if self.kl_schedule not in SCHEDULES:
            raise ValueError(
                f"training setting kl_schedule={self.kl_schedule!r} is not one of {SCHEDULES}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"training setting device={self.device!r}: use auto, cpu or cuda")

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return asdict(self)


MODEL_KEYS = frozenset(f.name for f in fields(VAEConfig)) - set(DATA_FIELDS)
TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


def default_settings() -> dict:
    """Every model and training setting at its default, the one source of defaults.

    The workflow completes each run's settings with these
    (:func:`scvae.config.resolve_variant`); its schema states no defaults of its own.

    Returns
    -------
    dict
        Flat settings: :class:`~scvae.module.config.VAEConfig` (except the fields set
        from the data, :data:`~scvae.module.config.DATA_FIELDS`) and :class:`TrainConfig`
        fields with their default values.
    """
    out = {f.name: f.default for f in fields(VAEConfig) if f.name not in DATA_FIELDS}
    out.update({f.name: f.default for f in fields(TrainConfig)})
    return out


def split_settings(
    settings: dict, n_input: int, n_categories: tuple[int, ...] = (), n_batch: int = 0
) -> tuple[VAEConfig, TrainConfig]:
    """Split flat settings into the model's and the training's, rejecting unknown keys.

    Parameters
    ----------
    settings
        Keys of :class:`~scvae.module.VAEConfig` (except the fields set from the data)
        and :class:`TrainConfig`.
    n_input
        Number of genes.
    n_categories, n_batch
        Categories of each covariate of the data (the batch first) and of the batch (0:
        none); the model takes them only when ``condition_on_batch`` is true.

    Returns
    -------
    tuple
        ``(VAEConfig, TrainConfig)``.

    Raises
    ------
    ValueError
        If a key is unknown, a value has the wrong type or is out of range; the message
        names the key.
    """
    unknown = sorted(set(settings) - MODEL_KEYS - TRAIN_KEYS)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown}; model settings are {sorted(MODEL_KEYS)}, "
            f"training settings are {sorted(TRAIN_KEYS)}"
        )
    for key, value in settings.items():
        _check_type(key, value)
    model_settings = {k: v for k, v in settings.items() if k in MODEL_KEYS}
    if model_settings.get("condition_on_batch", True):
        model_settings.update(n_categories=tuple(n_categories), n_batch=int(n_batch))
    model = VAEConfig(n_input=n_input, **model_settings)
    train = TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_KEYS})
    return model, train


def _field_types(cls: type) -> dict[str, type]:
    return typing.get_type_hints(cls)


_TYPES = {**_field_types(VAEConfig), **_field_types(TrainConfig)}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_type(key: str, value: object) -> None:
    """Reject a value of the wrong type with a message naming the key (as the schema does)."""
    expected = _TYPES[key]
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(
            f"setting {key}={value!r}: expected {_TYPE_NAMES.get(expected, expected.__name__)}, "
            f"got {type(value).__name__}"
        )


def settings_hash(*parts: dict) -> str:
    """Short stable hash of settings dicts (identifies runs and checkpoints)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
