"""The workflow's config, its schema and the CLI's error handling."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from scvae.cli import main
from scvae.config import config_with_defaults, preprocess_settings, resolve_variant, variant_names
from scvae.training.settings import MODEL_KEYS, TRAIN_KEYS, default_settings

ROOT = Path(__file__).resolve().parents[1]


def _load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return _load("config/config.schema.yaml")


@pytest.fixture
def config() -> dict:
    return _load("config/config.yaml")


def _validate(config: dict, schema: dict) -> None:
    jsonschema.Draft202012Validator(schema).validate(config)


@pytest.mark.parametrize("path", ["config/config.yaml", ".test/config/config.yaml"])
def test_shipped_configs_are_valid(path, schema):
    _validate(_load(path), schema)


def test_every_schema_key_has_a_description_and_the_settings_match_the_code(schema):
    settings = schema["$defs"]["settings"]["properties"]
    assert set(settings) == set(MODEL_KEYS | TRAIN_KEYS)
    for name, prop in settings.items():
        assert "description" in prop, name
    for name, prop in schema["properties"].items():
        assert "description" in prop or "$ref" in prop, name


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(preproces={}), "preproces"),
        (lambda c: c["defaults"].update(n_latnet=5), "n_latnet"),
        (lambda c: c["variants"].setdefault("vanilla", {}).update(beta=-1.0), "-1.0"),
        (lambda c: c["variants"].setdefault("vanilla", {}).update(free_bits=-0.1), "-0.1"),
        (
            lambda c: c["variants"].setdefault("vanilla", {}).update(likelihood="gaussian"),
            "gaussian",
        ),
        (lambda c: c["defaults"].update(n_latent="ten"), "ten"),
        (lambda c: c["variants"].update(pca10={}), "pca10"),
        (lambda c: c["variants"].setdefault("vanilla", {}).update(n_latnet=5), "n_latnet"),
        (lambda c: c["variants"].setdefault("vanilla", {}).update(kl_schedule="cosine"), "cosine"),
        (lambda c: c["variants"].setdefault("vanilla", {}).update(beta="high"), "high"),
        (lambda c: c["variants"].setdefault("vanilla", {}).update(batch_size=1), "'batch_size': 1"),
        (lambda c: c["defaults"].update(batch_size=1), "1 is less than the minimum of 2"),
        (lambda c: next(iter(c["datasets"].values())).update(fromat="csv"), "fromat"),
        (lambda c: c.setdefault("baselines", {}).update(pca_target_sum="mean"), "'mean'"),
        (lambda c: c.setdefault("baselines", {}).update(pca_target_sum=0), "0 is not valid"),
        (lambda c: c["cluster"].update(kmeans_fits=0), "0 is less than the minimum of 1"),
        (lambda c: c.update(threads=0), "0 is less than the minimum of 1"),
    ],
)
def test_schema_rejects_typos_and_bad_values(config, schema, mutate, message):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        _validate(bad, schema)


def test_resolve_variant_layers_defaults_variant_and_seed(config):
    s = resolve_variant(config, "beta4", 7)
    assert s["beta"] == 4.0 and s["seed"] == 7
    # Settings the config leaves out come from the package defaults.
    assert s["n_latent"] == default_settings()["n_latent"]
    with pytest.raises(KeyError, match="nope"):
        resolve_variant(config, "nope", 0)


def test_preprocess_settings_turn_off_values_into_none(config):
    config = config_with_defaults(config)
    s = preprocess_settings(config)
    assert s["max_counts"] is None and s["max_mito_fraction"] is None
    assert s["min_genes"] == config["preprocess"]["min_genes"]
    assert preprocess_settings({"preprocess": {"max_counts": 2000}}) == {"max_counts": 2000}


def test_default_config_runs_presets_of_the_package(config):
    # The default config repeats no preset: the package is the one source of them.
    assert not config["variants"] and not config["with_batches"]
    assert set(config["run_variants"]) <= set(variant_names(config))
    assert "recommended" in config["run_variants"]


def test_default_config_runs_the_bundled_data_with_symbols_names_and_batches(config):
    # The demo's promise: a fresh clone reads its default data set, whose marker
    # genes and labels a reader recognizes (not gene_110 and 1..8), in two batches.
    from scvae.data.readers import read_counts

    for name, entry in config["datasets"].items():
        path = ROOT / entry["path"]
        assert path.is_file() and path.is_relative_to(ROOT / "resources"), name
        adata = read_counts(path, label_key=entry["label_key"])
        assert {"CD14", "LYZ", "MS4A1", "NKG7"} <= set(adata.var_names), name
        labels = adata.obs["label"].cat.categories
        assert not any(label.isdigit() for label in labels), (name, list(labels))
        assert adata.obs[entry["batch_key"]].nunique() == 2, name


def test_cli_prints_input_errors_as_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.h5ad"
    status = main(
        [
            "preprocess",
            "--input",
            str(missing),
            "--output",
            str(tmp_path / "out.h5ad"),
            "--qc-plot",
            str(tmp_path / "qc.png"),
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert f"scvae preprocess: error: {missing}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.h5ad").exists()


def test_cli_rejects_malformed_settings_json():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scvae.cli",
            "train",
            "--input",
            "x",
            "--model",
            "m",
            "--history",
            "h",
            "--latent",
            "l",
            "--settings",
            "{not json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "not valid JSON" in proc.stderr
