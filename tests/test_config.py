"""The workflow config's defaults come from the package, and the reading options."""

from __future__ import annotations

import copy
import importlib
import inspect
import shlex
from pathlib import Path

import pytest
import yaml

from scvae.config import (
    DEFAULTS_FROM,
    READER_KEYS,
    WORKFLOW_DEFAULTS,
    config_defaults,
    config_with_defaults,
    fill_defaults,
    preprocess_settings,
    reader_options,
    resolve_variant,
)
from scvae.presets import DEFAULT_PRESET
from scvae.training.settings import default_settings
from scvae.workflow_runs import HARMONY_N_COMPONENTS

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"datasets": {"d": {"path": "d.h5ad"}}, "run_variants": ["vanilla"], "seeds": [0]}


def _signature(module: str, function: str) -> dict:
    params = inspect.signature(getattr(importlib.import_module(module), function)).parameters
    return {name: p.default for name, p in params.items()}


def _schema_keys(node: dict, prefix: str = "") -> set[str]:
    """Every dotted key the schema allows (``<name>`` for a free-named key)."""
    keys = set()
    for key, child in node.get("properties", {}).items():
        keys |= {prefix + key, *_schema_keys(child, f"{prefix}{key}.")}
        named = child.get("additionalProperties")
        if isinstance(named, dict):
            keys |= _schema_keys(named, f"{prefix}{key}.<name>.")
    return keys


@pytest.mark.parametrize("section", sorted(DEFAULTS_FROM))
def test_each_default_is_the_signature_default_of_the_function_that_takes_the_key(section):
    module, function, keys = DEFAULTS_FROM[section]
    in_code = _signature(module, function)
    defaults = config_defaults()
    for key in keys:
        value = defaults[f"{section}.{key}"]
        if section == "preprocess":
            # The config spells "off" as 0 (1.0 for the fraction); the function as None.
            value = preprocess_settings({"preprocess": {key: value}})[key]
        expected = in_code[key]
        assert value == (list(expected) if isinstance(expected, tuple) else expected), key


def test_the_workflow_runs_the_stage_functions_the_defaults_are_read_from():
    # Each rule passes its section as JSON to a subcommand, which calls the stage function
    # with it (run_diagnose and run_preprocess hand it on to diagnose and preprocess).
    cli = inspect.getsource(importlib.import_module("scvae.cli"))
    for module, function, _ in DEFAULTS_FROM.values():
        if module.startswith("scvae.stages."):
            assert f"from {module} import {function}" in cli, function


def test_every_default_names_a_key_of_the_schema():
    from scvae.atlas.grid import ATLAS_DEFAULTS

    schema = yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())
    keys = _schema_keys(schema)
    unknown = sorted(set(config_defaults()) - keys) + sorted(set(ATLAS_DEFAULTS) - keys)
    assert unknown == []
    settings = set(schema["$defs"]["settings"]["properties"])
    assert settings == set(default_settings())


def test_the_workflows_own_choices_refer_to_the_package_constants():
    defaults = config_defaults()
    assert defaults["baselines.harmony_pcs"] == HARMONY_N_COMPONENTS
    assert defaults["query.<name>.variant"] == DEFAULT_PRESET
    assert set(WORKFLOW_DEFAULTS) <= set(defaults)


def test_a_config_of_the_required_keys_gets_every_default():
    config = config_with_defaults(REQUIRED)
    assert config["preprocess"] == {
        key.split(".")[1]: value
        for key, value in config_defaults().items()
        if key.startswith("preprocess.")
    }
    assert config["datasets"]["d"] == {"path": "d.h5ad", "transpose": False, "covariates": []}
    assert config["threads"] == 1 and config["query"] == {}
    assert config["baselines"]["pca"] == [10, 20, 50]
    # Model and training settings are completed per run, not in the config.
    assert config["defaults"] == {} and config["variants"] == {}
    assert resolve_variant(config, "vanilla", 0) == default_settings()


def test_filling_keeps_the_users_values_and_order_and_copies():
    config = {
        **REQUIRED,
        "cluster": {"n_neighbors": 30, "resolutions": [0.5]},
        "query": {"q": {"path": "q.h5ad", "reference": "d", "seed": 2}},
        "defaults": {"max_epochs": 5},
    }
    before = copy.deepcopy(config)
    filled = config_with_defaults(config)
    assert config == before  # the input is not changed
    cluster = filled["cluster"]
    assert list(cluster)[:2] == ["n_neighbors", "resolutions"]  # the user's keys first
    assert cluster["n_neighbors"] == 30 and cluster["resolutions"] == [0.5]
    assert cluster["kmeans_fits"] == config_defaults()["cluster.kmeans_fits"]
    query = filled["query"]["q"]
    assert (query["seed"], query["variant"], query["epochs"]) == (2, DEFAULT_PRESET, 100)
    assert filled["defaults"] == {"max_epochs": 5}
    # A default that is a list is each config's own.
    filled["baselines"]["pca"].append(5)
    assert config_with_defaults(REQUIRED)["baselines"]["pca"] == [10, 20, 50]


def test_fill_defaults_reaches_every_entry_of_a_map():
    config = {"atlas": {"mechanisms": {"a": {}, "b": {"remedies": {"r": {}}}}}}
    filled = fill_defaults(config, {"atlas.mechanisms.<name>.remedies": {}, "atlas.n": 3})
    assert filled["atlas"]["mechanisms"] == {"a": {"remedies": {}}, "b": {"remedies": {"r": {}}}}
    assert filled["atlas"]["n"] == 3


@pytest.mark.parametrize(
    ("entry", "with_input", "expected"),
    [
        (
            {"path": "data/a b.h5ad", "label_key": "cell_type", "batch_key": "donor"},
            True,
            ["--input", "data/a b.h5ad", "--label-key", "cell_type", "--batch-key", "donor"],
        ),
        (
            {"samples": {"ctrl": "c.h5", "stim": "s.h5"}, "covariates": ["chem", "lane"]},
            True,
            ["--samples", "ctrl=c.h5", "stim=s.h5", "--covariates", "chem", "lane"],
        ),
        (
            # A query: its path is the rule's input; its other keys are not read options.
            {"path": "q.txt", "reference": "d", "seed": 0, "format": "csv", "transpose": True},
            False,
            ["--format", "csv", "--transpose"],
        ),
        (
            {"path": "x.h5", "layer": "counts", "transpose": False, "covariates": []},
            False,
            ["--layer", "counts"],
        ),
    ],
)
def test_reader_options(entry, with_input, expected):
    assert shlex.split(reader_options(entry, with_input=with_input)) == expected


def test_reader_options_cover_every_reading_key_of_the_schema():
    schema = yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())
    dataset = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    # known_markers is for the figures, not for reading.
    assert set(dataset) - {"path", "samples", "known_markers"} == set(READER_KEYS)
    # The command line takes each as the option reader_options gives.
    cli = inspect.getsource(importlib.import_module("scvae.cli"))
    for key in READER_KEYS:
        assert f'"--{key.replace("_", "-")}"' in cli, key


def test_resolve_variant_returns_every_setting_with_the_config_on_top():
    config = {"defaults": {"max_epochs": 7}, "variants": {"v": {"n_latent": 3}}}
    settings = resolve_variant(config, "v", 2)
    assert set(settings) == set(default_settings())
    assert settings["max_epochs"] == 7
    assert settings["n_latent"] == 3
    assert settings["seed"] == 2
    assert settings["lr"] == default_settings()["lr"]


def test_with_batches_replaces_a_variants_settings_on_data_with_batches_only():
    config = {
        "defaults": {"max_epochs": 7},
        "variants": {"v": {"n_latent": 20, "decoder_layers": 0}, "w": {}},
        "with_batches": {"v": {"decoder_layers": 1, "max_epochs": 400}},
    }
    plain = resolve_variant(config, "v", 0)
    batched = resolve_variant(config, "v", 0, batches=True)
    assert (plain["decoder_layers"], plain["max_epochs"]) == (0, 7)
    assert (batched["decoder_layers"], batched["max_epochs"], batched["n_latent"]) == (1, 400, 20)
    assert resolve_variant(config, "w", 0, batches=True) == resolve_variant(config, "w", 0)
