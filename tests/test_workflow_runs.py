"""Baseline run names, the runs each dataset gets, and the workflow's jobs for them."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from scvae.config import config_with_defaults
from scvae.workflow_runs import (
    BASELINE_PATTERN,
    BaselineSpec,
    baseline_arguments,
    baseline_minutes,
    baseline_name,
    dataset_baselines,
    dataset_has_batches,
    parse_baseline_name,
    scvi_default_epochs,
)

ROOT = Path(__file__).resolve().parents[1]
HAS_SCVI = importlib.util.find_spec("scvi") is not None


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text())


@pytest.fixture
def baselines() -> dict:
    """The ``baselines`` section as the workflow sees it with nothing set: the defaults."""
    return config_with_defaults({})["baselines"]


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("pca50", BaselineSpec("pca", n_components=50)),
        ("harmony", BaselineSpec("harmony")),
        ("scvi", BaselineSpec("scvi")),
        ("scvi_e25", BaselineSpec("scvi", max_epochs=25)),
    ],
)
def test_names_and_specs_round_trip(name, spec):
    assert parse_baseline_name(name) == spec
    assert spec.name == name
    assert re.fullmatch(BASELINE_PATTERN, name)


@pytest.mark.parametrize("name", ["vanilla", "pca", "scvi10", "scvi_e", "harmony2", "xpca10"])
def test_other_names_are_not_baselines(name):
    assert parse_baseline_name(name) is None
    with pytest.raises(ValueError, match="not a baseline run name"):
        baseline_arguments(name, {})


def test_baseline_name_needs_the_pca_size_and_a_known_method():
    assert baseline_name("scvi", 10, None) == "scvi"  # scVI's size is not in its name
    with pytest.raises(ValueError, match="n_components"):
        baseline_name("pca")
    with pytest.raises(ValueError, match="unknown baseline method 'umap'"):
        baseline_name("umap", 2)


def test_defaults_give_pca_harmony_with_batches_and_scvi(baselines):
    assert baselines["harmony"] and baselines["scvi"] and baselines["scvi_epochs"] == []
    plain = dataset_baselines(baselines, has_batches=False)
    assert plain == ["pca10", "pca20", "pca50", "scvi"]
    batched = dataset_baselines(baselines, has_batches=True)
    assert batched == ["pca10", "pca20", "pca50", "harmony", "scvi"]


def test_scvi_epochs_harmony_switch_and_missing_scvi(baselines):
    baselines.update(pca=[10, 10], scvi_epochs=[25, 100, 25])
    assert dataset_baselines(baselines, has_batches=True) == [
        "pca10",
        "harmony",
        "scvi",
        "scvi_e25",
        "scvi_e100",
    ]
    baselines.update(harmony=False, scvi=False)
    assert dataset_baselines(baselines, has_batches=True) == ["pca10", "scvi_e25", "scvi_e100"]
    assert dataset_baselines(baselines, has_batches=True, scvi_available=False) == ["pca10"]


def test_batches_come_from_batch_key_or_samples():
    assert not dataset_has_batches({"path": "x.h5ad"})
    assert not dataset_has_batches({"path": "x.h5ad", "covariates": ["donor"]})
    assert dataset_has_batches({"path": "x.h5ad", "batch_key": "plate"})
    assert dataset_has_batches({"samples": {"a": "a.h5", "b": "b.h5"}})


def test_arguments_of_each_run(baselines):
    baselines.update(pca_target_sum=10000, harmony_pcs=30)
    assert baseline_arguments("pca20", baselines) == [
        "--method",
        "pca",
        "--n-components",
        "20",
        "--target-sum",
        "10000",
    ]
    assert baseline_arguments("harmony", baselines) == [
        "--method",
        "harmony",
        "--n-components",
        "30",
        "--target-sum",
        "10000",
    ]
    assert baseline_arguments("scvi", baselines) == ["--method", "scvi"]
    assert baseline_arguments("scvi_e25", baselines) == ["--method", "scvi", "--max-epochs", "25"]


def test_the_arguments_parse_on_the_command_line(baselines):
    from scvae.cli import build_parser

    for name in ("pca10", "harmony", "scvi_e25"):
        argv = ["baseline", "--input", "a", "--output", "b", *baseline_arguments(name, baselines)]
        args = build_parser().parse_args(argv)
        assert args.method == parse_baseline_name(name).method


def test_scvi_epochs_rule_is_scvi_tools_rule():
    assert [scvi_default_epochs(n) for n in (60, 20_000, 40_000, 10**8)] == [400, 400, 200, 1]
    if HAS_SCVI:
        from scvi.model._utils import get_max_epochs_heuristic

        for n in (60, 1408, 20_001, 123_456, 2_000_000):
            assert scvi_default_epochs(n) == get_max_epochs_heuristic(n)


def test_run_time_estimates():
    assert baseline_minutes("pca50", 10**5, 2000, input_mb=1024) == 45
    assert baseline_minutes("harmony", 10**5, 2000, input_mb=1024) == 45
    # CellBench's scVI: 400 epochs; 1,153 s estimated (459 s measured) on top of 15 min.
    assert baseline_minutes("scvi", 1408, 2000, input_mb=0) == 15 + 19
    assert baseline_minutes("scvi_e25", 1408, 2000, input_mb=0) == 16
    assert baseline_minutes("scvi", 1408, 2000, input_mb=0, threads=4) == 15 + 9
    # Beyond 20,000 cells scVI's epochs fall as the cells grow: the time levels off.
    assert baseline_minutes("scvi", 10**5, 2000, input_mb=0) == baseline_minutes(
        "scvi", 2 * 10**5, 2000, input_mb=0
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("harmony", "yes", "'yes' is not of type 'boolean'"),
        ("harmony_pcs", 0, "0 is less than the minimum of 1"),
        ("scvi", 1, "1 is not of type 'boolean'"),
        ("scvi_epochs", [0], "0 is less than the minimum of 1"),
        ("scvi_epochs", 25, "25 is not of type 'array'"),
        ("scvi_epoch", [25], "scvi_epoch"),
    ],
)
def test_schema_checks_the_baseline_keys(schema, key, value, message):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    config.setdefault("baselines", {})[key] = value
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        jsonschema.Draft202012Validator(schema).validate(config)


def _dry_run_outputs(workdir: Path) -> set[str]:
    """Output files of every job a dry run of the workflow in ``workdir`` lists."""
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    proc = subprocess.run(
        [*snakemake, "--directory", str(workdir), "-n", "--cores", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    return {path for line in re.findall(r"output: (.+)", console) for path in line.split(", ")}


def test_dry_run_lists_harmony_only_for_the_datasets_with_batches(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copytree(ROOT / ".test" / "data", tmp_path / "data")
    for copy_name in ("plates.h5ad", "a.h5", "b.h5"):
        shutil.copy(tmp_path / "data" / "pbmc300.h5", tmp_path / "data" / copy_name)
    config = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    config["datasets"] = {
        "plain": {"path": "data/pbmc300.h5"},
        "plates": {"path": "data/plates.h5ad", "batch_key": "plate"},
        "pooled": {"samples": {"a": "data/a.h5", "b": "data/b.h5"}},
    }
    config["run_variants"] = ["vanilla"]
    config["baselines"] = {"pca": [6], "scvi": True, "scvi_epochs": [3]}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    outputs = _dry_run_outputs(tmp_path)
    runs = {
        tuple(m.groups())
        for path in outputs
        if (m := re.fullmatch(r"results/(\w+)/(\w+)/seed0/latent\.h5ad", path))
    }
    scvi = {"scvi", "scvi_e3"} if HAS_SCVI else set()
    batched = {"vanilla", "pca6", "harmony", *scvi}
    assert runs == {("plain", n) for n in {"vanilla", "pca6", *scvi}} | {
        (dataset, n) for dataset in ("plates", "pooled") for n in batched
    }
