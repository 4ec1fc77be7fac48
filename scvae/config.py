"""Turn the workflow config into the settings each stage's function takes."""

from __future__ import annotations

from collections.abc import Mapping

from scvae.training.settings import MODEL_KEYS, TRAIN_KEYS, default_settings


def resolve_variant(config: Mapping, variant: str, seed: int, *, batches: bool = False) -> dict:
    """Complete settings of one run: package defaults, config ``defaults``, variant, seed.

    Later sources override earlier ones; on a dataset with batches the variant's entry of
    ``config["with_batches"]`` comes after the variant.

    Parameters
    ----------
    config
        The workflow config, with ``defaults`` and ``variants`` mappings.
    variant
        Name of a key of ``config["variants"]``.
    seed
        Replicate seed.
    batches
        Whether the dataset has batches (``batch_key`` or ``samples``).

    Returns
    -------
    dict
        Flat settings accepted by :func:`scvae.train`, every model and training key
        present (:func:`scvae.training.settings.default_settings` fills what the config
        leaves out), so that no caller needs a fallback value.
    """
    variants = config.get("variants", {})
    if variant not in variants:
        raise KeyError(
            f"variant {variant!r} is not defined in config 'variants' ({sorted(variants)})"
        )
    with_batches = (config.get("with_batches") or {}).get(variant) if batches else None
    chosen = {
        **config.get("defaults", {}),
        **(variants[variant] or {}),
        **(with_batches or {}),
        "seed": int(seed),
    }
    unknown = sorted(set(chosen) - MODEL_KEYS - TRAIN_KEYS)
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown setting(s) {unknown}")
    return {**default_settings(), **chosen}


# Config values that mean "no filter"; the preprocessing functions take None for that.
_OFF = {"min_counts": 0, "max_counts": 0, "n_top_genes": 0, "max_mito_fraction": 1.0}


def preprocess_settings(config: Mapping) -> dict:
    """Keyword arguments of :func:`scvae.preprocess.preprocess` from ``config["preprocess"]``.

    Parameters
    ----------
    config
        The workflow config.

    Returns
    -------
    dict
        Filter settings, with the config's "off" values (0, or 1.0 for the mitochondrial
        fraction) as None.
    """
    out = {}
    for key, value in (config.get("preprocess") or {}).items():
        out[key] = None if key in _OFF and value == _OFF[key] else value
    return out
