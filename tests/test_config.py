"""Each default lives once: the schema's `default:` values equal the code's, key by key."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from scvae.config import preprocess_settings, resolve_variant
from scvae.training.settings import default_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())


def _schema_defaults(section: dict) -> dict:
    return {key: prop["default"] for key, prop in section["properties"].items()}


def _signature_defaults(func, keys) -> dict:
    params = inspect.signature(func).parameters
    return {key: params[key].default for key in keys}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_model_and_training_defaults_of_schema_and_dataclasses_are_equal(schema):
    in_schema = _schema_defaults(schema["$defs"]["settings"])
    in_code = default_settings()
    assert set(in_schema) == set(in_code)
    for key, value in in_code.items():
        assert in_schema[key] == value, key
        assert type(in_schema[key]) is type(value) or isinstance(value, float), key


def test_preprocess_defaults_of_schema_and_function_are_equal(schema):
    from scvae.preprocess.memory import preprocess

    # The schema spells "off" as 0 (or 1.0 for the fraction); the function as None.
    in_schema = preprocess_settings(
        {"preprocess": _schema_defaults(schema["properties"]["preprocess"])}
    )
    assert in_schema == _signature_defaults(preprocess, in_schema)


def test_diagnostics_defaults_of_schema_and_function_are_equal(schema):
    from scvae.diagnostics.run import diagnose

    in_schema = _schema_defaults(schema["properties"]["diagnostics"])
    assert in_schema == _signature_defaults(diagnose, in_schema)


def test_cluster_defaults_of_schema_and_function_are_equal(schema):
    from scvae.cluster import run_cluster

    in_schema = _schema_defaults(schema["properties"]["cluster"])
    in_code = _signature_defaults(run_cluster, in_schema)
    assert in_schema == {k: _plain(v) for k, v in in_code.items()}


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
