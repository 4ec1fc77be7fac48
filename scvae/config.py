"""Turn the workflow config into the settings each stage's function takes.

The config's defaults have one source, the package: the model and training settings
are :func:`scvae.training.settings.default_settings` (filled in by
:func:`resolve_variant`); every other key left out takes the default of the function
that receives it (:data:`DEFAULTS_FROM`, read from the signature by
:func:`scvae.utils.signature.source_defaults`) or, where no function takes it as such,
the workflow's own choice (:data:`WORKFLOW_DEFAULTS`). :func:`config_with_defaults`
fills them in; the schema (``config/config.schema.yaml``) checks types and ranges only.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from typing import Any

from scvae.presets import DEFAULT_PRESET, PRESETS, preset_overrides
from scvae.training.settings import MODEL_KEYS, TRAIN_KEYS, default_settings
from scvae.utils.signature import source_defaults
from scvae.workflow_runs import HARMONY_N_COMPONENTS

__all__ = [
    "DEFAULTS_FROM",
    "READER_KEYS",
    "WORKFLOW_DEFAULTS",
    "config_defaults",
    "config_with_defaults",
    "fill_defaults",
    "preprocess_settings",
    "reader_options",
    "resolve_variant",
    "variant_names",
    "variant_overrides",
]

#: Config keys whose default is a package function's: dotted config section (``<name>``
#: for every entry of a map) -> (module, function, the keys it takes from that section).
DEFAULTS_FROM: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "datasets.<name>": ("scvae.stages.preprocess", "run_preprocess", ("transpose", "covariates")),
    "preprocess": (
        "scvae.preprocess.memory",
        "preprocess",
        ("min_genes", "min_cells", "min_counts", "max_counts", "max_mito_fraction", "n_top_genes"),
    ),
    "diagnostics": (
        "scvae.diagnostics.suite",
        "diagnose",
        ("k_iwae", "n_mi", "n_jacobian", "au_threshold"),
    ),
    "cluster": (
        "scvae.stages.cluster",
        "run_cluster",
        (
            "resolutions",
            "n_neighbors",
            "kmeans_fits",
            "scib",
            "markers",
            "marker_genes",
            "decoded",
            "decoded_batch",
            "umap_max_cells",
            "graph_max_cells",
        ),
    ),
    "query.<name>": ("scvae.stages.map", "run_map", ("seed", "transpose", "n_neighbors", "epochs")),
}

#: Defaults that no package function takes as such: the workflow's own choices, by
#: dotted config key (``<name>``: every entry of a map).
WORKFLOW_DEFAULTS: dict[str, Any] = {
    "defaults": {},
    "variants": {},
    "with_batches": {},
    # The baselines of every comparison: PCA at three sizes, Harmony where the data
    # have batches, scVI with scvi-tools' own defaults.
    "baselines.pca": [10, 20, 50],
    "baselines.pca_target_sum": "median",
    "baselines.harmony": True,
    "baselines.harmony_pcs": HARMONY_N_COMPONENTS,
    "baselines.scvi": True,
    "baselines.scvi_epochs": [],
    "query": {},
    "query.<name>.variant": DEFAULT_PRESET,
    "threads": 1,
}


def variant_names(config: Mapping) -> list[str]:
    """Every variant a workflow config can run: the package presets and its own ``variants``.

    Parameters
    ----------
    config
        The workflow config.

    Returns
    -------
    list of str
        Sorted names.
    """
    return sorted(set(PRESETS) | set(config.get("variants") or {}))


def variant_overrides(config: Mapping, variant: str, *, batches: bool = False) -> dict:
    """The settings a variant changes from the config's ``defaults``.

    A variant is a preset of the package (:data:`scvae.presets.PRESETS`) or an entry of
    ``config["variants"]``. An entry starts from the preset its ``preset:`` key names
    (``rec_30d: {preset: recommended, n_latent: 30}``), else from the package defaults,
    and overrides it: an entry is a complete definition, so a config written before the
    presets existed (whose entries spelled every variant out, ``recommended`` included)
    means what it meant. On a dataset with batches the preset's batch-aware form
    (:data:`scvae.presets.WITH_BATCHES`) comes before the entry's own keys, and the
    variant's entry of ``config["with_batches"]`` after them.

    Parameters
    ----------
    config
        The workflow config.
    variant
        A preset or a key of ``config["variants"]``.
    batches
        Whether the dataset has batches (``batch_key`` or ``samples``).

    Returns
    -------
    dict
        The settings the variant sets (without the seed).

    Raises
    ------
    KeyError
        If the variant is neither a preset nor defined in the config, or an entry names
        an unknown preset.
    """
    variants = config.get("variants") or {}
    if variant not in variants and variant not in PRESETS:
        raise KeyError(
            f"variant {variant!r} is neither a preset of the package ({sorted(PRESETS)}) nor "
            f"defined in config 'variants' ({sorted(variants)})"
        )
    entry = dict(variants.get(variant) or {})
    base = entry.pop("preset", None) if variant in variants else variant
    if base is not None and base not in PRESETS:
        raise KeyError(
            f"variant {variant!r}: preset {base!r} is not one of the package's presets "
            f"({sorted(PRESETS)})"
        )
    out = preset_overrides(base, batches=batches) if base is not None else {}
    out.update(entry)
    if batches:
        out.update((config.get("with_batches") or {}).get(variant) or {})
    return out


def resolve_variant(config: Mapping, variant: str, seed: int, *, batches: bool = False) -> dict:
    """Complete settings of one run: package defaults, config ``defaults``, variant, seed.

    Later sources override earlier ones; the variant's part is
    :func:`variant_overrides` (its preset, its config entry, and on a dataset with
    batches the batch-aware settings).

    Parameters
    ----------
    config
        The workflow config, with ``defaults`` and ``variants`` mappings.
    variant
        A preset of the package or a key of ``config["variants"]``.
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
    chosen = {
        **(config.get("defaults") or {}),
        **variant_overrides(config, variant, batches=batches),
        "seed": int(seed),
    }
    unknown = sorted(set(chosen) - MODEL_KEYS - TRAIN_KEYS)
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown setting(s) {unknown}")
    return {**default_settings(), **chosen}


# Config values that mean "no filter"; the preprocessing functions take None for that.
_OFF = {"min_counts": 0, "max_counts": 0, "n_top_genes": 0, "max_mito_fraction": 1.0}


def _config_value(key: str, value: Any) -> Any:
    """A function's default as the config spells it (YAML lists; "off" values for None)."""
    if value is None and key.startswith("preprocess."):
        return _OFF[key.rpartition(".")[2]]
    return list(value) if isinstance(value, tuple) else value


def config_defaults() -> dict[str, Any]:
    """Every default of the workflow config, by dotted key as config/README.md lists them.

    Read from the package each time: the signatures named in :data:`DEFAULTS_FROM` and
    :data:`WORKFLOW_DEFAULTS`. The model and training settings (``defaults``,
    ``variants.<name>``) are :func:`scvae.training.settings.default_settings`, and the
    atlas keys :data:`scvae.atlas.grid.ATLAS_DEFAULTS`.

    Returns
    -------
    dict
        Dotted key (``preprocess.min_genes``, ``datasets.<name>.transpose``, ``threads``)
        -> default, in the config's spelling: lists, not tuples; 0 (or 1.0 for the
        mitochondrial fraction) for a filter that is off.
    """
    out = {}
    for section, (module, function, keys) in DEFAULTS_FROM.items():
        found = source_defaults(module, function)
        missing = [k for k in keys if k not in found]
        if missing:
            raise ValueError(
                f"{module}.{function} has no default for {missing}, the config's "
                f"{section} keys it should take"
            )
        out.update({f"{section}.{k}": _config_value(f"{section}.{k}", found[k]) for k in keys})
    out.update(copy.deepcopy(WORKFLOW_DEFAULTS))
    return out


def config_with_defaults(config: Mapping) -> dict:
    """The workflow config with every key it leaves out at its default.

    ``defaults`` and the variants are left as they are: :func:`resolve_variant`
    completes a run's settings.

    Parameters
    ----------
    config
        The workflow config, validated against its schema.

    Returns
    -------
    dict
        A deep copy, completed from :func:`config_defaults` by :func:`fill_defaults`.
    """
    return fill_defaults(config, config_defaults())


def fill_defaults(config: Mapping, defaults: Mapping[str, Any]) -> dict:
    """A copy of ``config`` with each dotted key of ``defaults`` set where it is missing.

    A section or entry keeps the keys it has first, in its order, and gets the missing
    ones after them (as JSON Schema's defaults would be filled in), so that the settings
    each rule passes on are complete and their text stable.

    Parameters
    ----------
    config
        The workflow config.
    defaults
        Dotted key -> default; ``<name>`` stands for every entry of a map
        (``datasets.<name>.transpose``), and a missing section is created.

    Returns
    -------
    dict
        A deep copy of ``config``, completed.
    """
    out = copy.deepcopy(dict(config))
    for key, value in defaults.items():
        *path, name = key.split(".")
        targets = [out]
        for part in path:
            if part == "<name>":
                targets = [entry for t in targets for entry in t.values()]
            else:
                targets = [t.setdefault(part, {}) for t in targets]
        for target in targets:
            target.setdefault(name, copy.deepcopy(value))
    return out


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


#: Keys of a dataset's entry that say how to read it, in the order of their options.
READER_KEYS = ("format", "label_key", "layer", "transpose", "batch_key", "covariates")


def reader_options(entry: Mapping, *, with_input: bool = False) -> str:
    """Options of ``scvae preprocess`` and ``scvae map`` that read a dataset, shell-quoted.

    The one builder of these options for every rule that reads counts (``preprocess``,
    ``map``, ``atlas_preprocess``).

    Parameters
    ----------
    entry
        The dataset's entry of the config: ``datasets.<name>``, ``query.<name>`` or
        ``atlas.datasets.<name>``; keys other than :data:`READER_KEYS` (and ``path``,
        ``samples`` with ``with_input``) are ignored.
    with_input
        Start with the input: ``--input PATH``, or ``--samples NAME=PATH ...`` for an
        entry of ``samples``.

    Returns
    -------
    str
        E.g. ``--input data/a.h5ad --label-key cell_type --batch-key donor``. A key that
        is absent, empty or false gives no option (the command's default applies).
    """
    opts: list[str] = []
    if with_input:
        if entry.get("samples"):
            opts += ["--samples", *(f"{name}={path}" for name, path in entry["samples"].items())]
        else:
            opts += ["--input", str(entry["path"])]
    for key in READER_KEYS:
        value = entry.get(key)
        if not value:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            opts.append(flag)
        elif isinstance(value, list | tuple):
            opts += [flag, *map(str, value)]
        else:
            opts += [flag, str(value)]
    return shlex.join(opts)
