"""A dataset's batches in the workflow: config keys, the preprocess command, reruns.

Dry runs (``snakemake -n``) on the `.test` config with datasets of several samples and
of a batch column; the command they print is then run through ``scvae.cli.main``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse

from scvae.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
        + ["--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def _counts(n_cells: int, seed: int, prefix: str) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    X = sparse.csr_matrix(rng.poisson(2.0, size=(n_cells, 50)).astype(np.float32))
    obs = pd.DataFrame(
        {
            "donor": rng.choice(["d1", "d2"], n_cells),
            "plate": np.repeat(["p1", "p2"], n_cells // 2),
        },
        index=[f"{prefix}{i}" for i in range(n_cells)],
    )
    return anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(50)]))


@pytest.fixture
def workdir(tmp_path) -> Path:
    """The `.test` config with a dataset of two samples and one with a batch column."""
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    (tmp_path / "data").mkdir()
    _counts(60, 0, "a").write_h5ad(tmp_path / "data" / "ctrl.h5ad")
    _counts(60, 1, "b").write_h5ad(tmp_path / "data" / "stim.h5ad")
    _counts(80, 2, "c").write_h5ad(tmp_path / "data" / "plates.h5ad")
    _write_datasets(
        tmp_path,
        {
            "multi": {
                "samples": {"ctrl": "data/ctrl.h5ad", "stim": "data/stim.h5ad"},
                "covariates": ["donor"],
            },
            "plated": {"path": "data/plates.h5ad", "batch_key": "plate"},
        },
    )
    return tmp_path


def _write_datasets(workdir: Path, datasets: dict) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["datasets"] = datasets
    path.write_text(yaml.safe_dump(config))


def _preprocess_commands(stdout: str) -> dict[str, list[str]]:
    """The dry run's preprocess commands (``-p``), by dataset, as argument lists."""
    commands = {}
    for line in stdout.splitlines():
        if " preprocess " in line and "--output" in line:
            words = shlex.split(line.split("Shell command:", 1)[-1])
            dataset = Path(words[words.index("--output") + 1]).parent.name
            commands[dataset] = words
    return commands


def test_the_preprocess_command_names_every_sample_and_the_batch_options(workdir, monkeypatch):
    targets = ["results/multi/preprocessed.h5ad", "results/plated/preprocessed.h5ad"]
    proc = _snakemake(workdir, "-n", "-p", *targets)
    assert proc.returncode == 0, proc.stderr
    commands = _preprocess_commands(proc.stdout)
    multi = commands["multi"]
    at = multi.index("--samples")
    assert multi[at + 1 : at + 3] == ["ctrl=data/ctrl.h5ad", "stim=data/stim.h5ad"]
    assert multi[multi.index("--covariates") + 1] == "donor"
    assert "--input" not in multi and "--batch-key" not in multi
    plated = commands["plated"]
    assert plated[plated.index("--input") + 1] == "data/plates.h5ad"
    assert plated[plated.index("--batch-key") + 1] == "plate"
    # Every sample file is an input of the job.
    assert "input: data/ctrl.h5ad, data/stim.h5ad" in proc.stdout

    # The printed command runs: the package reads what the workflow passes.
    monkeypatch.chdir(workdir)
    assert main(multi[multi.index("scvae.cli") + 1 :]) == 0
    log = (workdir / "logs" / "multi" / "preprocess.log").read_text()
    assert "batch 'ctrl' has only 60 cells, fewer than one minibatch" in log
    adata = anndata.read_h5ad(workdir / "results" / "multi" / "preprocessed.h5ad")
    assert adata.obs["batch"].value_counts().to_dict() == {"ctrl": 60, "stim": 60}
    assert list(adata.uns["scvae"]["preprocess"]["covariate_keys"]) == ["donor"]


def test_a_changed_sample_file_reruns_the_preprocessing(workdir):
    results = workdir / "results" / "multi"
    results.mkdir(parents=True)
    for name in ("preprocessed.h5ad", "qc.png"):
        (results / name).write_bytes(b"x")
    past = time.time() - 100
    for sample in ("ctrl", "stim"):
        os.utime(workdir / "data" / f"{sample}.h5ad", (past, past))
    target = "results/multi/preprocessed.h5ad"
    proc = _snakemake(workdir, "-n", target)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    os.utime(workdir / "data" / "stim.h5ad")  # newer than the outputs
    proc = _snakemake(workdir, "-n", target)
    assert proc.returncode == 0, proc.stderr
    assert "Updated input files: data/stim.h5ad" in proc.stdout


def _train_settings(stdout: str) -> dict[str, dict]:
    """The dry run's train settings (``-p``), by dataset."""
    settings = {}
    for line in stdout.splitlines():
        if " train " in line and "--settings" in line:
            words = shlex.split(line.split("Shell command:", 1)[-1])
            dataset = Path(words[words.index("--model") + 1]).parents[2].name
            settings[dataset] = json.loads(words[words.index("--settings") + 1])
    return settings


def test_with_batches_settings_apply_to_datasets_with_batches_only(workdir):
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["datasets"]["plain"] = {"path": "data/plates.h5ad"}
    config["with_batches"] = {"recommended": {"decoder_layers": 2, "n_latent": 5}}
    path.write_text(yaml.safe_dump(config))
    targets = [f"results/{d}/recommended/seed0/latent.h5ad" for d in ("plated", "plain")]
    proc = _snakemake(workdir, "-n", "-p", *targets)
    assert proc.returncode == 0, proc.stderr
    settings = _train_settings(proc.stdout)
    assert (settings["plated"]["decoder_layers"], settings["plated"]["n_latent"]) == (2, 5)
    differ = {k: v for k, v in settings["plated"].items() if settings["plain"][k] != v}
    assert differ == {"decoder_layers": 2, "n_latent": 5}

    config["with_batches"] = {"undefined": {"n_latent": 5}}
    path.write_text(yaml.safe_dump(config))
    proc = _snakemake(workdir, "-n")
    assert proc.returncode != 0 and "with_batches names 'undefined'" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("dataset", "named"),
    [
        (
            {"path": "data/plates.h5ad", "samples": {"a": "data/ctrl.h5ad"}},
            "is valid under each of",
        ),
        ({"format": "h5ad"}, "is not valid under any of the given schemas"),
        ({"samples": {"a": "data/ctrl.h5ad"}, "batch_key": "plate"}, "batch_key"),
        ({"samples": {"a b": "data/ctrl.h5ad"}}, "'a b'"),
        ({"path": "data/plates.h5ad", "covariates": ["batch"]}, "'batch'"),
    ],
    ids=[
        "path-and-samples",
        "neither",
        "samples-and-batch-key",
        "bad-sample-name",
        "batch-covariate",
    ],
)
def test_bad_dataset_configs_fail_before_anything_runs(workdir, dataset, named):
    _write_datasets(workdir, {"bad": dataset})
    proc = _snakemake(workdir, "-n")
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr


@pytest.mark.filterwarnings("ignore:.*fewer than one minibatch")
def test_samples_on_the_command_line(tmp_path, capsys):
    for name in ("a", "b"):
        _counts(40, ord(name), name).write_h5ad(tmp_path / f"{name}.h5ad")
    common = ["--qc-plot", str(tmp_path / "qc.png"), "--params", '{"n_top_genes": null}']
    as_json = f'{{"a": "{tmp_path / "a.h5ad"}", "b": "{tmp_path / "b.h5ad"}"}}'
    status = main(
        ["preprocess", "--samples", as_json, "--output", str(tmp_path / "j.h5ad"), *common]
    )
    assert status == 0
    assert anndata.read_h5ad(tmp_path / "j.h5ad").obs["batch"].cat.categories.tolist() == ["a", "b"]
    bad = ["preprocess", "--samples", "a", "--output", str(tmp_path / "x.h5ad"), *common]
    assert main(bad) == 1
    assert "--samples: 'a' is not NAME=PATH" in capsys.readouterr().err
    twice = f"a={tmp_path / 'a.h5ad'}"
    assert main(["preprocess", "--samples", twice, twice, "--output", "x.h5ad", *common]) == 1
    assert "sample 'a' is given twice" in capsys.readouterr().err


@pytest.mark.parametrize(("sizes_mb", "grouped"), [((150,), True), ((150, 150), False)])
def test_a_dataset_of_samples_is_sized_by_all_its_files(tmp_path, sizes_mb, grouped):
    """Two samples under the 200 MB of a small dataset each, but over it together."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    (tmp_path / "data").mkdir()
    samples = {}
    for i, size in enumerate(sizes_mb):
        path = tmp_path / "data" / f"s{i}.h5ad"
        with path.open("wb") as f:
            f.truncate(size * 10**6)  # a sparse file: its size without the disk space
        samples[f"s{i}"] = f"data/s{i}.h5ad"
    _write_datasets(tmp_path, {"multi": {"samples": samples}})
    proc = _snakemake(
        tmp_path,
        "-n",
        "--executor",
        "slurm",
        "--jobs",
        "4",
        "--default-resources",
        "slurm_account=none",
    )
    assert proc.returncode == 0, proc.stderr
    assert ("Group job postprocess" in proc.stdout + proc.stderr) is grouped
