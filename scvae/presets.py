"""Named model settings: ``recommended``, its batch-aware form, and the collapse atlas variants.

A preset is a set of overrides of the package defaults
(:func:`scvae.training.settings.default_settings`, which are the ``vanilla`` model).
:class:`scvae.SCVAE` and :func:`scvae.train` take one by name (``recommended`` when none
is named), the workflow's variants of the same name use it (``config/config.yaml`` need
not repeat it), and the benchmarks read their settings here.

Light: imports nothing but the settings dataclasses (no torch), so the Snakefile can read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from scvae.training.settings import default_settings

DEFAULT_PRESET = "recommended"
"""The preset :class:`scvae.SCVAE` and :func:`scvae.train` use when none is named."""

# Chosen from measurements (docs/results.md and the collapse atlas, docs/atlas): a linear
# decoder cannot model the data without z; annealing + free bits keep every dimension
# active; a calibrated dispersion cannot start the noisy-decoder vicious cycle. The
# training length is a label-free rule, not an epoch count: up to 400 epochs of 256
# cells, stopped when the validation ELBO stalls for 20 epochs after the warm-up. Chosen
# leave-one-dataset-out on five labelled datasets (docs/results.md).
_RECOMMENDED = {
    "n_latent": 20,
    "batch_size": 256,
    "max_epochs": 400,
    "decoder_layers": 0,
    "kl_schedule": "linear",
    "warmup_fraction": 0.5,
    "free_bits": 0.5,
    "calibrated_dispersion": True,
}

PRESETS: Mapping[str, Mapping] = MappingProxyType(
    {
        # The package defaults: scVI's architecture and a constant KL weight.
        "vanilla": {},
        "annealed": {"kl_schedule": "linear", "warmup_fraction": 0.5},
        "free_bits": {"free_bits": 0.5},
        "annealed_free_bits": {"kl_schedule": "linear", "warmup_fraction": 0.5, "free_bits": 0.5},
        "beta4": {"beta": 4.0},
        "skip": {"skip": "ungated"},
        # The skip design that keeps z informative (collapse atlas): the gate alone does
        # not (it learns to stay open), so each cell's skip path is also dropped half of
        # the time.
        "gated_skip": {"skip": "gated", "skip_dropout": 0.5},
        "recommended": _RECOMMENDED,
        # Measured beside the healthy reference in the collapse atlas (docs/atlas): the
        # calibrated dispersion alone, on top of annealing + free bits, and with the
        # linear decoder (`recommended` when it had 10 dimensions and 25 epochs).
        "annealed_free_bits_calibrated": {
            "kl_schedule": "linear",
            "warmup_fraction": 0.5,
            "free_bits": 0.5,
            "calibrated_dispersion": True,
        },
        "recommended_calibrated": {
            "decoder_layers": 0,
            "kl_schedule": "linear",
            "warmup_fraction": 0.5,
            "free_bits": 0.5,
            "calibrated_dispersion": True,
        },
    }
)
"""Preset name -> the settings it changes from the package defaults."""

WITH_BATCHES: Mapping[str, Mapping] = MappingProxyType(
    {
        # A conditional model removes a batch effect only with a hidden decoder layer,
        # where the batch meets z; scVI's schedule (the KL warm-up over all 400 epochs)
        # integrated best on CellBench and Kang (docs/batches.md).
        "recommended": {"decoder_layers": 1, "n_latent": 10, "warmup_fraction": 1.0},
    }
)
"""Preset name -> what changes on top of it for data with batches (a batch key or samples)."""


def preset_overrides(name: str, *, batches: bool = False) -> dict:
    """The settings a preset changes from the package defaults.

    Parameters
    ----------
    name
        A key of :data:`PRESETS`.
    batches
        Whether the data have batches: then the preset's :data:`WITH_BATCHES` entry
        applies on top of it.

    Returns
    -------
    dict
        Only the keys the preset sets (a new dict).

    Raises
    ------
    KeyError
        If ``name`` is not a preset; the message lists the presets.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; the presets are {sorted(PRESETS)}")
    out = dict(PRESETS[name])
    if batches:
        out.update(WITH_BATCHES.get(name, {}))
    return out


def preset_settings(name: str = DEFAULT_PRESET, *, batches: bool = False) -> dict:
    """Every model and training setting of a preset: the package defaults, then the preset.

    Parameters
    ----------
    name
        A key of :data:`PRESETS`.
    batches
        Whether the data have batches (:data:`WITH_BATCHES`).

    Returns
    -------
    dict
        Flat settings accepted by :func:`scvae.train`, every key present.

    Examples
    --------
    >>> from scvae.presets import preset_settings
    >>> preset_settings("recommended")["n_latent"]
    20
    >>> preset_settings("recommended", batches=True)["n_latent"]
    10
    """
    return {**default_settings(), **preset_overrides(name, batches=batches)}
