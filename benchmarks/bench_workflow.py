"""The whole workflow on synthetic data of 10^5 and 10^6 cells: time, memory and disk per rule.

For each size, a synthetic h5ad (:func:`scvae.data.synthetic.write_synthetic_h5ad`: NB
counts, 2,000 genes, 10 clusters in ``obs["label"]``) is run through the default
workflow (this repository's Snakefile) with the presets ``recommended`` and
``vanilla`` (``scvae.presets``) and the baseline PCA 50, one seed, on
``--cores`` cores. Each job's wall time and peak RSS come from the ``scvae`` command's
last log line (``done in ... s, peak RSS ... MB``: ``getrusage``, the kernel's peak); the
disk is what ``results/`` holds. The training length is capped (``--max-epochs``):
``recommended`` trains up to 400 epochs, which at 10^6 cells is days on two cores.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_workflow.py --sizes 100000 1000000
    PYTHONPATH=. .venv/bin/python benchmarks/bench_workflow.py --table   # print the tables

Results go to ``--out`` (JSON, one record per size, written as each size finishes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path("/tmp/scvae-bench/workflow")
DONE = re.compile(r"scvae (\S+) done in ([\d.]+) s, peak RSS ([\d.]+) MB")


def bench_config(data: Path, max_epochs: int, threads: int) -> dict:
    """The default config with one synthetic dataset, two variants and PCA 50."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # The presets, each with the benchmark's epoch count.
    variants = {v: {"max_epochs": max_epochs} for v in ("recommended", "vanilla")}
    config.update(
        datasets={"synthetic": {"path": str(data), "format": "h5ad"}},
        variants=variants,
        run_variants=["recommended", "vanilla"],
        seeds=[0],
        threads=threads,
    )
    config.setdefault("baselines", {}).update(pca=[50], harmony=False, scvi=False, scvi_epochs=[])
    return config


def csr_bytes(path: Path) -> int:
    """Bytes of the CSR arrays of ``X`` (data, indices, indptr) of an h5ad file."""
    with h5py.File(path, "r") as f:
        return sum(f["X"][k].size * f["X"][k].dtype.itemsize for k in ("data", "indices", "indptr"))


def disk_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (hard links once)."""
    seen, total = set(), 0
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def job_records(logs: Path) -> list[dict]:
    """One record per job log: rule, run, seconds and peak RSS (MB)."""
    out = []
    for log in sorted(logs.rglob("*.log")):
        found = DONE.findall(log.read_text())
        if found:
            command, seconds, rss = found[-1]
            run = str(log.parent.relative_to(logs))
            out.append(
                {"rule": command, "run": run, "seconds": float(seconds), "rss_mb": float(rss)}
            )
    return out


def run_size(n_cells: int, work: Path, args: argparse.Namespace) -> dict:
    """Generate the data (once), run the workflow from scratch, measure."""
    from scvae.data.synthetic import write_synthetic_h5ad

    data = work / "data" / f"synthetic_{n_cells}.h5ad"
    if not data.exists():
        start = time.perf_counter()
        write_synthetic_h5ad(data, n_cells, args.genes, seed=0)
        print(f"{n_cells}: wrote {data} in {time.perf_counter() - start:.0f} s", flush=True)
    run_dir = work / f"run_{n_cells}"
    if not (args.rerun or args.refresh):
        if run_dir.exists():
            shutil.rmtree(run_dir)
        (run_dir / "config").mkdir(parents=True)
        config = bench_config(data, args.max_epochs, args.threads)
        (run_dir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--cores",
        str(args.cores),
    ]
    if args.rerun:  # these rules' jobs again (after a fix), nothing downstream
        cmd += ["--forcerun", *args.rerun, "--until", *args.rerun]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    returncode = 0
    if not args.refresh:
        with open(run_dir / ("rerun.log" if args.rerun else "snakemake.log"), "w") as log:
            proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        returncode = proc.returncode
    wall = None if args.refresh else time.perf_counter() - start
    results = run_dir / "results" / "synthetic"
    pre = results / "preprocessed.h5ad"
    record = {
        "n_cells": n_cells,
        "genes": args.genes,
        "cores": args.cores,
        "threads": args.threads,
        "max_epochs": args.max_epochs,
        "returncode": returncode,
        "wall_seconds": wall,
        "input_bytes": data.stat().st_size,
        "csr_bytes": csr_bytes(pre) if pre.exists() else None,
        "preprocessed_bytes": pre.stat().st_size if pre.exists() else None,
        "results_bytes": disk_bytes(run_dir / "results"),
        "run_bytes": {
            str(d.relative_to(results)): disk_bytes(d) for d in sorted(results.glob("*/seed*"))
        },
        "file_bytes": {
            str(p.relative_to(results)): p.stat().st_size
            for p in sorted(results.glob("*/seed*/*.h5ad"))
        },
        "jobs": job_records(run_dir / "logs"),
    }
    return record


def time_clustering(n_cells: int, work: Path, umap_all: bool) -> dict:
    """Neighbors, Leiden and UMAP timed one by one on a run's latent means.

    The settings of :func:`scvae.clustering.cluster` (15 neighbours, Leiden igraph with two
    iterations at resolution 1, seed 0); UMAP on the workflow's subsample
    (``cluster.umap_max_cells``) and, with ``umap_all``, on every cell.
    """
    import anndata
    import numpy as np
    import scanpy as sc

    from scvae.stages.cluster import run_cluster

    latent = (
        work / f"run_{n_cells}" / "results" / "synthetic" / "recommended" / "seed0" / "latent.h5ad"
    )
    z = np.asarray(anndata.read_h5ad(latent).obsm["X_scvae"])
    umap_max = inspect_default(run_cluster, "umap_max_cells")
    out: dict = {"n_cells": n_cells, "dims": z.shape[1], "umap_max_cells": umap_max}

    def timed(name, fn):
        start = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - start
        print(f"{n_cells}: {name} {out[name]:.1f} s", flush=True)

    a = anndata.AnnData(obsm={"X_scvae": z})
    timed(
        "neighbors", lambda: sc.pp.neighbors(a, n_neighbors=15, use_rep="X_scvae", random_state=0)
    )
    timed(
        "leiden",
        lambda: sc.tl.leiden(
            a, resolution=1.0, flavor="igraph", n_iterations=2, directed=False, random_state=0
        ),
    )
    rows = np.sort(np.random.default_rng(0).choice(n_cells, min(umap_max, n_cells), replace=False))
    sub = anndata.AnnData(obsm={"X_scvae": z[rows]})
    if len(rows) < n_cells:
        timed(
            "umap_subsample_neighbors",
            lambda: sc.pp.neighbors(sub, n_neighbors=15, use_rep="X_scvae", random_state=0),
        )
        timed("umap_subsample", lambda: sc.tl.umap(sub, random_state=0))
    if umap_all or len(rows) == n_cells:
        timed("umap_all", lambda: sc.tl.umap(a, random_state=0))
    return out


def inspect_default(func, name: str):
    """The default of a keyword argument of ``func``."""
    import inspect

    return inspect.signature(func).parameters[name].default


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def print_tables(records: list[dict]) -> None:
    """Markdown tables of the records."""
    mb = 1e6
    print("| cells | rule | run | s | peak RSS MB | RSS / CSR |")
    print("|---:|---|---|---:|---:|---:|")
    for r in records:
        csr = r["csr_bytes"] or float("nan")
        for j in r["jobs"]:
            run = j["run"].removeprefix("synthetic/").removeprefix("synthetic")
            print(
                f"| {r['n_cells']:,} | {j['rule']} | {run or '-'} | {j['seconds']:,.0f} | "
                f"{j['rss_mb']:,.0f} | {j['rss_mb'] * mb / csr:.2f} |"
            )
    print()
    print(
        "| cells | exit | wall min | CSR MB | preprocessed MB | results/ MB "
        "| results / preprocessed | largest run MB (share) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in records:
        pre = r["preprocessed_bytes"] or float("nan")
        name, size = max(r["run_bytes"].items(), key=lambda kv: kv[1], default=("-", 0))
        print(
            f"| {r['n_cells']:,} | {r['returncode']} | {_minutes(r['wall_seconds'])} | "
            f"{(r['csr_bytes'] or 0) / mb:,.0f} | {pre / mb:,.0f} | "
            f"{r['results_bytes'] / mb:,.0f} | "
            f"{r['results_bytes'] / pre:.2f} | {name} {size / mb:,.0f} ({size / pre:.1%}) |"
        )
    print()
    print("| cells | file | MB | share of preprocessed |")
    print("|---:|---|---:|---:|")
    for r in records:
        pre = r["preprocessed_bytes"] or float("nan")
        for name, size in r["file_bytes"].items():
            print(f"| {r['n_cells']:,} | {name} | {size / mb:,.1f} | {size / pre:.1%} |")


def print_clustering(timings: list[dict]) -> None:
    """Markdown table of :func:`time_clustering` records."""
    keys = ["neighbors", "leiden", "umap_subsample_neighbors", "umap_subsample", "umap_all"]
    print("| cells | dims | " + " | ".join(f"{k} s" for k in keys) + " |")
    print("|---:|---:|" + "---:|" * len(keys))
    for t in sorted(timings, key=lambda r: r["n_cells"]):
        cells = " | ".join(f"{t[k]:,.0f}" if k in t else "-" for k in keys)
        print(f"| {t['n_cells']:,} | {t['dims']} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per job")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default WORK/results.json)")
    parser.add_argument("--table", action="store_true", help="only print the tables of --out")
    parser.add_argument(
        "--clustering",
        action="store_true",
        help="time neighbors, Leiden and UMAP on the runs' latents (after the workflow runs)",
    )
    parser.add_argument(
        "--refresh",
        nargs="+",
        default=[],
        help="re-read the logs and disk of an existing run (names the rules rerun by hand)",
    )
    parser.add_argument(
        "--rerun", nargs="+", default=[], help="rerun these rules' jobs of an existing run"
    )
    parser.add_argument(
        "--umap-all", action="store_true", help="with --clustering: UMAP on all cells too"
    )
    args = parser.parse_args()
    out = args.out or args.work / "results.json"
    records = json.loads(out.read_text()) if out.exists() else []
    if args.clustering:
        timings_path = args.work / "clustering.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else []
        for n in args.sizes:
            t = time_clustering(n, args.work, args.umap_all)
            timings = [r for r in timings if r["n_cells"] != n] + [t]
            timings_path.write_text(json.dumps(timings, indent=1))
        print_clustering(timings)
        return
    if not args.table:
        for n in args.sizes:
            record = run_size(n, args.work, args)
            first = next((r for r in records if r["n_cells"] == n), None)
            if first is not None and (args.rerun or args.refresh):
                # The first run's wall time and exit status stand.
                record.update(
                    wall_seconds=first["wall_seconds"],
                    returncode=first["returncode"] or record["returncode"],
                    rerun=sorted(set(first.get("rerun", [])) | set(args.rerun or args.refresh)),
                )
            records = [r for r in records if r["n_cells"] != n] + [record]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records, indent=1))
            print(f"{n}: exit {record['returncode']}", flush=True)
    print_tables(sorted(records, key=lambda r: r["n_cells"]))


if __name__ == "__main__":
    main()
