"""The workflow profiles and the sbatch options they lead to (no cluster needed).

The run on a real cluster is in test_slurm.py (marker `slurm`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {
    "local": ROOT / "profiles" / "local",
    "slurm": ROOT / "profiles" / "slurm",
    "test": Path(__file__).resolve().parent / "profile",
}


def _dry_run(workdir: Path, profile: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
        + ["--directory", str(workdir), "--workflow-profile", str(profile), "-n", "-p"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture
def workdir(tmp_path) -> Path:
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    shutil.copytree(ROOT / ".test" / "data", tmp_path / "data")
    return tmp_path


def test_slurm_profile_sets_what_the_cluster_needs():
    profile = yaml.safe_load((PROFILES["slurm"] / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["jobs"] > 0 and profile["latency-wait"] > 0
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])
    stages = {"preprocess", "train", "diagnose", "cluster", "compare"}
    assert stages <= set(profile["set-threads"])
    assert profile["group-components"]["postprocess"] > 1
    test = yaml.safe_load((PROFILES["test"] / "config.yaml").read_text())
    assert test["slurm-status-command"] == "squeue" and test["slurm-no-account"] is True


def _train_blocks(out: str, rule: str = "train") -> dict[str, str]:
    """The dry run's description of each job of ``rule``, by variant."""
    # Each job's block runs to the next job's "rule <name>:" line (indented in group jobs).
    parts = re.split(r"\n\s*(?:local)?rule (\w+):", out)
    blocks = [body for name, body in zip(parts[1::2], parts[2::2], strict=True) if name == rule]
    return {re.search(r"variant=(\w+)", b).group(1): b for b in blocks}


@pytest.mark.parametrize("name", ["local", "slurm"])
def test_profile_dry_run_and_gpu_request(workdir, name):
    cfg_path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["variants"]["recommended"]["device"] = "cuda"  # vanilla keeps device: cpu
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = _dry_run(workdir, PROFILES[name])
    train = _train_blocks(out)
    assert set(train) == {"recommended", "vanilla"}
    assert "gpu=1" in train["recommended"]  # device: cuda -> one GPU
    assert "gpu=" not in train["vanilla"]  # device: cpu -> no GPU resource at all
    # The diagnostics of a cuda run run on the GPU too (rule diagnose, --device).
    diagnose = _train_blocks(out, "diagnose")
    assert "gpu=1" in diagnose["recommended"] and "--device cuda" in diagnose["recommended"]
    assert "gpu=" not in diagnose["vanilla"] and "--device cpu" in diagnose["vanilla"]
    if name == "slurm":
        assert all(re.search(r"threads: 4\n", block) for block in train.values())
        assert "Group job postprocess" in out  # small dataset: post-training jobs grouped


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    def __init__(self, threads: int, **resources):
        self.threads = threads
        self.resources = _Resources(resources)


def _sbatch(job: _Job) -> str:
    params = {
        "run_uuid": "uuid",
        "slurm_logfile": "log",
        "comment_str": "rule_train",
        "account": "",
        "partition": "",
        "workdir": "/w",
    }
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.parametrize("gpu", [None, 0])
def test_cpu_jobs_get_no_gpu_option(gpu):
    resources = {"mem_mb": 2000, "runtime": 30} | ({"gpu": gpu} if gpu is not None else {})
    call = _sbatch(_Job(4, **resources))
    assert "--gpus" not in call and "--gres" not in call
    assert "--cpus-per-task=4" in call and "--mem 2000" in call and "-t 30" in call


def test_gpu_jobs_get_one_gpu():
    call = _sbatch(_Job(4, mem_mb=2000, runtime=30, gpu=1))
    assert "--gpus=1" in call and "--cpus-per-task=4" in call
    call = _sbatch(_Job(4, mem_mb=2000, runtime=30, gres="gpu:1"))
    assert "--gres=gpu:1" in call
