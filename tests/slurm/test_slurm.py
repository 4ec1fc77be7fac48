"""The workflow on a real SLURM cluster (snakemake-executor-plugin-slurm, slurmctld 22.05).

Needs root and Debian's SLURM packages: the `cluster` fixture runs tests/slurm/up.sh (which
installs them when missing and starts a one-node cluster) and, when the cluster was not
already up, tests/slurm/down.sh at the end, failures included. `.ci/run` brings the
cluster up and down around this suite itself.

    bash tests/slurm/up.sh && .venv/bin/python -m pytest -m slurm tests/slurm -rP
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TEST_PROFILE = HERE / "profile"
LOCAL_PROFILE = ROOT / "profiles" / "local"
RUNS = ["recommended", "vanilla", "pca6"]
# Rule jobs of the `.test` config (the `all` target runs no job).
RULE_LOGS = [
    "pbmc300/preprocess.log",
    "pbmc300/recommended/seed0/train.log",
    "pbmc300/vanilla/seed0/train.log",
    "pbmc300/pca6/seed0/baseline.log",
    "pbmc300/recommended/seed0/diagnose.log",
    "pbmc300/vanilla/seed0/diagnose.log",
    "pbmc300/recommended/seed0/cluster.log",
    "pbmc300/vanilla/seed0/cluster.log",
    "pbmc300/pca6/seed0/cluster.log",
    "pbmc300/compare.log",
]
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
# Fault test: a training long enough to cancel mid-run (45-100 ms per epoch on one core
# for 300 cells), with a checkpoint every 2 epochs.
LONG_EPOCHS = 200


def _snakemake(workdir: Path, *args: str, timeout: int = 540) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
        + ["--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _copy_test_config(workdir: Path) -> Path:
    """The `.test` run on its PBMC dataset only: the suite tests the executor, and the
    batch dataset's jobs (scIB, Harmony) are covered by tests/test_workflow.py."""
    shutil.copytree(ROOT / ".test" / "config", workdir / "config")
    shutil.copytree(ROOT / ".test" / "data", workdir / "data")
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["datasets"] = {"pbmc300": config["datasets"]["pbmc300"]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def _cluster_is_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return "UP" in out.stdout


def _squeue_states() -> dict[str, str]:
    """SLURM job id -> state of every job slurmctld remembers (MinJobAge = 600 s)."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.split())


@pytest.fixture(scope="module")
def cluster():
    """A running one-node cluster; stopped afterwards if this fixture started it."""
    was_up = _cluster_is_up()
    try:
        subprocess.run(["bash", str(HERE / "up.sh")], check=True, timeout=900)
        yield
    finally:
        if not was_up:
            subprocess.run(["bash", str(HERE / "down.sh")], timeout=120)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, float]:
    """The `.test` workflow run on this machine: the reference."""
    workdir = _copy_test_config(tmp_path_factory.mktemp("local"))
    start = time.perf_counter()
    proc = _snakemake(workdir, "--workflow-profile", str(LOCAL_PROFILE), "--cores", "2")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, seconds


@pytest.fixture(scope="module")
def slurm_run(cluster, local_run, tmp_path_factory) -> tuple[Path, float, str]:
    """The `.test` workflow run through `--executor slurm` (after the local run)."""
    workdir = _copy_test_config(tmp_path_factory.mktemp("slurm"))
    start = time.perf_counter()
    proc = _snakemake(workdir, "--workflow-profile", str(TEST_PROFILE))
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-6000:]
    return workdir, seconds, proc.stderr


def test_every_job_ran_as_a_slurm_job(slurm_run):
    workdir, _, console = slurm_run
    submitted = dict(SUBMITTED.findall(console))
    assert submitted, console[-4000:]
    # slurmctld knows each of them, and each finished.
    states = _squeue_states()
    for jobid in submitted:
        assert states.get(jobid) == "COMPLETED", (jobid, states.get(jobid))
        # The plugin's per-job log (kept by slurm-keep-successful-logs).
        assert Path(submitted[jobid]).is_file(), submitted[jobid]
        assert Path(submitted[jobid]).is_relative_to(workdir / ".snakemake" / "slurm_logs")
    # Every rule's command ran inside one of those jobs: the CLI logs SLURM_JOB_ID.
    job_of_rule = {}
    for name in RULE_LOGS:
        text = (workdir / "logs" / name).read_text()
        found = re.findall(r"SLURM_JOB_ID=(\d+)", text)
        assert len(found) == 1, (name, text[:2000])
        assert found[0] in submitted, (name, found[0], submitted)
        job_of_rule[name] = found[0]
    assert set(job_of_rule.values()) == set(submitted)
    # The diagnose, baseline and cluster jobs of the three runs share one SLURM job
    # (group `postprocess`, group-components 8); the others have one each.
    post = {job_of_rule[n] for n in RULE_LOGS if re.search(r"(diagnose|baseline|cluster)", n)}
    assert len(post) == 1
    assert len(submitted) == 5  # preprocess, 2 x train, postprocess group, compare


def _compare(a, b, path: str = "") -> list[str]:
    """Differences between two JSON values; numbers within 1e-5; timings ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
        return [
            d
            for k in a
            if not re.search(r"seconds|time", k)
            for d in _compare(a[k], b[k], f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _compare(x, y, f"{path}[{i}]")
        ]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        same = math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("run", RUNS)
def test_slurm_results_equal_the_local_run(local_run, slurm_run, run):
    results = [w / "results" / "pbmc300" / run / "seed0" for w in (local_run[0], slurm_run[0])]
    means = [anndata.read_h5ad(r / "latent.h5ad").obsm["X_scvae"] for r in results]
    np.testing.assert_allclose(means[1], means[0], rtol=0, atol=1e-5)
    files = ["metrics.json"] + (["diagnostics.json"] if run != "pca6" else [])
    for name in files:
        local, slurm = (json.loads((r / name).read_text()) for r in results)
        assert _compare(local, slurm) == [], name


def test_wall_times(local_run, slurm_run):
    """Prints the wall times (shown by `pytest -rP`)."""
    print(
        f"wall time of the .test workflow: local (--cores 2) {local_run[1]:.0f} s, "
        f"SLURM (1 node, 2 CPUs) {slurm_run[1]:.0f} s"
    )


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"snakemake ended (status {proc.returncode}) before {what}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _train_processes(workdir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["cwd"] == str(workdir) and "scvae.cli" in cmd and " train " in cmd:
            found.append(p)
    return found


def test_cancelled_training_resumes_from_its_checkpoint(slurm_run, tmp_path):
    """scancel the training job mid-run; the rerun completes from the checkpoint."""
    # The finished SLURM run's folder, with a long-training variant added: only its
    # train job is new (preprocessing is reused).
    workdir = tmp_path / "fault"
    shutil.copytree(slurm_run[0], workdir, ignore=shutil.ignore_patterns("slurm_logs"))
    cfg_path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["variants"]["long"] = {"max_epochs": LONG_EPOCHS, "checkpoint_every": 2}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # same params JSON
    run = workdir / "results" / "pbmc300" / "long" / "seed0"
    target = str(run.relative_to(workdir) / "latent.h5ad")
    checkpoint = workdir / "checkpoints" / "pbmc300" / "long" / "seed0" / "checkpoint.pt"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--directory", str(workdir), "--workflow-profile", str(TEST_PROFILE), target]

    console = workdir / "first.log"
    with open(console, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _wait_for(checkpoint.exists, 300, "the first checkpoint", proc)
            time.sleep(1)  # a few more epochs and checkpoints
            jobid = _wait_for(
                lambda: re.findall(r"rule_train/pbmc300_long_0/(\d+)\.log", console.read_text()),
                30,
                "the train job's SLURM id",
                proc,
            )[0]
            subprocess.run(["scancel", jobid], check=True)
            status = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = console.read_text()
    assert status != 0, text[-4000:]
    assert _squeue_states().get(jobid) == "CANCELLED"
    assert not (run / "latent.h5ad").exists(), "training finished before the scancel"
    assert checkpoint.exists()
    _wait_for(lambda: not _train_processes(workdir), 30, "the cancelled training to end")

    rerun = _snakemake(
        workdir, "--workflow-profile", str(TEST_PROFILE), "--rerun-incomplete", target
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    log = (workdir / "logs" / "pbmc300" / "long" / "seed0" / "train.log").read_text()
    resumed = re.search(r"resuming from \S+ after epoch (\d+)", log)
    assert resumed, log[:3000]
    assert 2 <= int(resumed.group(1)) < LONG_EPOCHS
    new_job = re.findall(r"SLURM_JOB_ID=(\d+)", log)
    assert new_job and new_job[0] != jobid
    history = pd.read_csv(run / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, LONG_EPOCHS + 1))
    assert anndata.read_h5ad(run / "latent.h5ad").obsm["X_scvae"].shape == (300, 6)
