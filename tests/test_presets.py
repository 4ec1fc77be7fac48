"""Presets live in the package; the workflow's variants, scvae.train and SCVAE use them."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from scvae.config import resolve_variant, variant_names, variant_overrides
from scvae.presets import PRESETS, WITH_BATCHES, preset_overrides, preset_settings
from scvae.training.settings import default_settings

ROOT = Path(__file__).resolve().parents[1]

# `recommended` as config/config.yaml spelled it before the presets moved into the
# package: the runs of the records (benchmarks/*_records.jsonl) were made with these.
RECOMMENDED_BEFORE = {
    "n_latent": 20,
    "batch_size": 256,
    "max_epochs": 400,
    "decoder_layers": 0,
    "kl_schedule": "linear",
    "warmup_fraction": 0.5,
    "free_bits": 0.5,
    "calibrated_dispersion": True,
}
WITH_BATCHES_BEFORE = {"decoder_layers": 1, "n_latent": 10, "warmup_fraction": 1.0}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())


def test_recommended_is_what_the_config_used_to_spell_out():
    assert preset_overrides("recommended") == RECOMMENDED_BEFORE
    assert preset_overrides("recommended", batches=True) == {
        **RECOMMENDED_BEFORE,
        **WITH_BATCHES_BEFORE,
    }
    assert preset_settings("recommended") == {**default_settings(), **RECOMMENDED_BEFORE}


def test_vanilla_is_the_package_defaults_and_presets_cannot_be_changed_in_place():
    assert preset_settings("vanilla") == default_settings()
    with pytest.raises(TypeError):
        PRESETS["mine"] = {}  # type: ignore[index]
    overrides = preset_overrides("recommended")
    overrides["n_latent"] = 3
    assert PRESETS["recommended"]["n_latent"] == 20


def test_every_preset_is_a_valid_setting_set():
    from scvae.training.settings import split_settings

    for name in PRESETS:
        for batches in (False, True):
            split_settings(preset_settings(name, batches=batches), n_input=50)
    assert set(WITH_BATCHES) <= set(PRESETS)


def test_unknown_preset_names_the_presets():
    with pytest.raises(KeyError, match="recommended"):
        preset_overrides("recomended")


def test_the_workflow_resolves_presets_without_config_entries(config):
    for name in PRESETS:
        assert name in variant_names(config)
        settings = resolve_variant(config, name, 3)
        assert settings == {**preset_settings(name), "seed": 3}
    on_batches = resolve_variant(config, "recommended", 0, batches=True)
    assert on_batches == {**preset_settings("recommended", batches=True), "seed": 0}


def test_config_entries_extend_presets_and_old_entries_keep_their_meaning(config):
    cfg = copy.deepcopy(config)
    cfg["defaults"] = {"max_epochs": 7, "n_latent": 4}
    cfg["variants"] = {
        "rec_30d": {"preset": "recommended", "n_latent": 30},
        "mine": {"beta": 2.0},  # no preset: the package defaults
        # As configs spelled variants before the presets moved into the package: an
        # entry is a complete definition, even under a preset's name.
        "recommended": {"kl_schedule": "linear", "free_bits": 0.5},
    }
    cfg["with_batches"] = {"rec_30d": {"n_hidden": 64}}
    rec_30d = resolve_variant(cfg, "rec_30d", 0)
    assert rec_30d == {**preset_settings("recommended"), "n_latent": 30, "seed": 0}
    # The preset overrides config defaults; the config entry overrides the preset.
    assert rec_30d["max_epochs"] == 400
    mine = resolve_variant(cfg, "mine", 0)
    assert mine["beta"] == 2.0 and mine["max_epochs"] == 7 and mine["n_latent"] == 4
    old_style = resolve_variant(cfg, "recommended", 0)
    assert old_style["max_epochs"] == 7 and old_style["n_latent"] == 4
    assert old_style["free_bits"] == 0.5 and old_style["decoder_layers"] == 1
    on_batches = variant_overrides(cfg, "rec_30d", batches=True)
    assert on_batches["n_latent"] == 30 and on_batches["decoder_layers"] == 1
    assert on_batches["n_hidden"] == 64
    with pytest.raises(KeyError, match="preset 'nope'"):
        resolve_variant({"variants": {"x": {"preset": "nope"}}}, "x", 0)
    with pytest.raises(KeyError, match="neither a preset"):
        resolve_variant(cfg, "undefined", 0)


def test_the_schema_accepts_a_preset_key_and_still_rejects_typos(config, schema):
    good = copy.deepcopy(config)
    good["variants"] = {"rec_30d": {"preset": "recommended", "n_latent": 30}}
    jsonschema.Draft202012Validator(schema).validate(good)
    bad = copy.deepcopy(good)
    bad["variants"]["rec_30d"]["n_latnet"] = 3
    with pytest.raises(jsonschema.ValidationError, match="n_latnet"):
        jsonschema.Draft202012Validator(schema).validate(bad)
