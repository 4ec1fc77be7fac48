"""The scale curve: `recommended`, scVI defaults and PCA 50 at 10^4, 10^5 and 10^6 cells.

Usage (from the repository root; scVI runs in ``.venv-bench``, see README.md)::

    .venv/bin/python benchmarks/bench_scale_curve.py data --sizes 10000 100000 1000000
    .venv/bin/python benchmarks/bench_scale_curve.py run --sizes 10000 \\
        --methods recommended rec_cells pca50 scvi --seeds 0
    .venv/bin/python benchmarks/bench_scale_curve.py table

The data are PBMC 4k (``../shared/data/pbmc4k_top2000.h5``, 2,000 genes, its labels)
resampled to each size by ``benchmarks/make_resampled.py`` (every new cell a real cell
binomially thinned to a random depth), written under ``$SCVAE_BENCH_DIR`` (default
``/tmp/scvae-scale-curve``).

Each (size, method, seed) is ONE fresh process (``OMP_NUM_THREADS=1``, one torch thread)
that reads the file, trains or embeds, and writes the embedding; ``seconds`` is that
process's wall time from its start to the embedding written (imports and reading
included), ``peak_rss_mb`` its peak RSS by then. The VAEs are then diagnosed in the same
process (modest sample sizes, timed apart as ``diag_seconds``; ``total_seconds`` and
``total_peak_rss_mb`` cover the whole process). The parent scores every embedding with
the code of ``bench_quality.py`` (KMeans ARI mean over 5 fits, Leiden ARI at resolutions
0.25-2 and the best). Within a size and seed the methods run interleaved, in the order
``recommended, scvi, rec_cells, pca50``, so that a change of load hits them alike.

Methods: the package's presets and the candidates of ``quality_methods.yaml``
(``bench_quality.load_methods``), ``pca50`` (:func:`scvae.baseline.pca_embedding`), and
``scvi`` (scvi-tools defaults on all cells: its own 90/10 split and epoch rule).
Records go to ``benchmarks/scale_curve_records.jsonl`` one line per run, the moment it
lands; a rerun skips what is there, so the benchmark can run in phases.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import method_hash, read_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "pbmc4k_top2000.h5"
RECORDS = ROOT / "benchmarks" / "scale_curve_records.jsonl"
WORK = Path(os.environ.get("SCVAE_BENCH_DIR", "/tmp/scvae-scale-curve"))
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SIZES = (10_000, 100_000, 1_000_000)
# Interleaving order within a size and seed (the issue's order).
ORDER = ("recommended", "scvi", "rec_cells", "pca50")
PCA_COMPONENTS = 50
# Diagnostics small enough not to dominate a run: they answer "collapsed or not".
DIAGNOSE = {"k_iwae": 20, "n_mi": 2_000, "n_jacobian": 100, "n_iwae": 1_000}


def data_path(n_cells: int) -> Path:
    """The resampled file of one size."""
    return WORK / f"pbmc_resampled_{n_cells}.h5ad"


def _methods() -> dict[str, dict]:
    """Every method of the quality benchmark, plus ``pca50`` and ``scvi`` (defaults)."""
    from bench_quality import load_methods

    methods = load_methods()
    methods.setdefault("pca50", {"kind": "pca", "n_components": PCA_COMPONENTS})
    methods.setdefault("scvi", {"kind": "scvi", "kwargs": {}})
    return methods


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------- data


def cmd_data(args: argparse.Namespace) -> None:
    """Write the resampled files that are missing (make_resampled.py, one source read)."""
    import make_resampled

    missing = [n for n in args.sizes if not data_path(n).exists()]
    for n in args.sizes:
        if n not in missing:
            print(f"{data_path(n)} exists, skipped", flush=True)
    if not missing:
        return
    WORK.mkdir(parents=True, exist_ok=True)
    out = str(WORK / f"pbmc_resampled_{make_resampled.PLACEHOLDER}.h5ad")
    argv = ["--source", str(SOURCE), "--n-cells", *map(str, missing), "--out", out]
    make_resampled.main(argv)


# ---------------------------------------------------------------------------- one run


def _fit_vae(path: Path, settings: dict, seed: int, backed: bool):
    import scvae
    from scvae.data.h5ad import read_h5ad

    adata = read_h5ad(path, backed=backed)
    model = scvae.train(adata, progress=False, **{**settings, "seed": seed, "threads": 1})
    X = model.get_latent(adata)
    s = model.summary
    info = {
        "epochs": s["epochs"],
        "cells_seen": s.get("cells_seen"),
        "stop_reason": s.get("stop_reason"),
        "stopped_early": s["stopped_early"],
        "train_seconds": s["train_seconds"],
        "n_train_cells": s.get("n_train_cells"),
        "warmup_end_cells": s.get("warmup_end_cells"),
        "val_elbo": s.get("final_val_elbo"),
        "n_latent": int(X.shape[1]),
    }
    return X, info, (model, adata)


def _fit_scvi(path: Path, kwargs: dict, seed: int):
    import anndata
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    scvi.settings.verbosity = 30
    kwargs = dict(kwargs)
    train_kwargs = kwargs.pop("train", {})
    adata = anndata.read_h5ad(path)
    scvi.model.SCVI.setup_anndata(adata, layer="counts" if "counts" in adata.layers else None)
    model = scvi.model.SCVI(adata, **kwargs)
    started = time.perf_counter()
    model.train(enable_progress_bar=False, **train_kwargs)
    seconds = time.perf_counter() - started
    X = np.asarray(model.get_latent_representation(adata), dtype=np.float32)
    # The epoch log's key differs between scvi-tools versions.
    keys = ("train_loss_epoch", "elbo_train", "reconstruction_loss_train")
    epochs = next((int(len(model.history[k])) for k in keys if k in model.history), None)
    info = {
        "epochs": epochs,
        "train_seconds": seconds,
        "n_latent": int(X.shape[1]),
        "scvi_version": scvi.__version__,
    }
    return X, info


def cmd_one(args: argparse.Namespace) -> None:
    """(Child process) fit one method on one file, write its embedding and info."""
    started = float(os.environ.get("SCALE_CURVE_T0", time.time()))
    import torch

    torch.set_num_threads(1)
    method = json.loads(args.method)
    out = Path(args.out)
    path = Path(args.path)
    fitted = None
    if method["kind"] == "vae":
        X, info, fitted = _fit_vae(path, method["settings"], args.seed, args.backed)
    elif method["kind"] == "scvi":
        X, info = _fit_scvi(path, method["kwargs"], args.seed)
    elif method["kind"] == "pca":
        import anndata

        from scvae.baseline import pca_embedding

        adata = anndata.read_h5ad(path)
        t0 = time.perf_counter()
        X = pca_embedding(adata, n_components=method["n_components"], seed=0)
        info = {"train_seconds": time.perf_counter() - t0, "n_latent": int(X.shape[1])}
    else:
        raise SystemExit(f"method kind {method['kind']!r} is not known here")
    np.save(out / "latent.npy", np.asarray(X, dtype=np.float32))
    info["seconds"] = time.time() - started
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if fitted is not None:
        from scvae.diagnostics.suite import diagnose

        t0 = time.perf_counter()
        diag = diagnose(*fitted, seed=args.seed, **DIAGNOSE)
        info.update(
            diag_seconds=time.perf_counter() - t0,
            active_units=diag["active_units"],
            mi=diag["mi"],
            verdict=diag["verdict"],
            iwae_val=diag["iwae_ll_per_cell"],
        )
    (out / "info.json").write_text(json.dumps(info, default=float))


# ---------------------------------------------------------------------------- runs


def _spawn(method: dict, path: Path, seed: int, backed: bool, out: Path) -> dict:
    """Run one child, time it and read its per-process peak RSS (``os.wait4``)."""
    python = BENCH_PYTHON if method["kind"] == "scvi" else Path(sys.executable)
    if not python.exists():
        raise FileNotFoundError(f"{python} is missing (scVI runs in .venv-bench: README.md)")
    cmd = [str(python), str(Path(__file__).resolve()), "one", "--method", json.dumps(method)]
    cmd += ["--path", str(path), "--seed", str(seed), "--out", str(out)]
    if backed:
        cmd.append("--backed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["NUMBA_NUM_THREADS"] = "1"
    env["SCALE_CURVE_T0"] = repr(time.time())
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child exited with {proc.returncode}: {' '.join(cmd[:3])} ...")
    info = json.loads((out / "info.json").read_text())
    info["total_seconds"] = total
    info["total_peak_rss_mb"] = usage.ru_maxrss / 1024
    return info


def _scores(X: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """The scores of ``bench_quality.py``: KMeans mean over its fits, Leiden per resolution."""
    from bench_quality import KMEANS_FITS

    from scvae.metrics import kmeans_ari_nmi
    from scvae.scores import leiden_resolution_scores

    km = kmeans_ari_nmi(X, labels, rng=seed, n_repeats=KMEANS_FITS)
    out = {"kmeans_ari": km["ari"], "kmeans_nmi": km["nmi"]}
    out.update(leiden_resolution_scores(X, labels, seed=seed))
    return out


def _labels(path: Path) -> np.ndarray:
    import anndata

    adata = anndata.read_h5ad(path, backed="r")
    if "label" not in adata.obs:
        raise SystemExit(f"{path}: obs has no 'label' column (rerun `data`)")
    return adata.obs["label"].astype(str).to_numpy()


def cmd_run(args: argparse.Namespace) -> None:
    """Run every missing (size, method, seed), interleaved, one record per line."""
    methods = _methods()
    for m in args.methods:
        if m not in methods:
            sys.exit(f"unknown method {m!r}; known: {sorted(methods)}")
    order = [m for m in ORDER if m in args.methods]
    order += [m for m in args.methods if m not in ORDER]
    done = {(r["n_cells"], r["method_hash"], r["seed"]) for r in read_records(RECORDS)}
    for n_cells in args.sizes:
        path = data_path(n_cells)
        if not path.exists():
            sys.exit(f"{path} is missing: run `bench_scale_curve.py data --sizes {n_cells}`")
        labels = _labels(path)
        for seed in args.seeds:
            for m in order:
                method = methods[m]
                h = method_hash(method)
                if (n_cells, h, seed) in done:
                    continue
                backed = method["kind"] == "vae" and n_cells >= args.backed_from
                load_before = _load()
                print(f"{n_cells:>9,} {m:12s} seed {seed}: running", flush=True)
                with tempfile.TemporaryDirectory(dir=WORK) as tmp:
                    try:
                        info = _spawn(method, path, seed, backed, Path(tmp))
                    except (RuntimeError, FileNotFoundError) as err:
                        print(f"FAILED {n_cells} {m} seed {seed}: {err}", flush=True)
                        continue
                    load_after = _load()
                    X = np.load(Path(tmp) / "latent.npy")
                t0 = time.perf_counter()
                scores = _scores(X, labels, seed)
                record = {
                    "n_cells": n_cells,
                    "method": m,
                    "method_hash": h,
                    "seed": seed,
                    "backed": backed,
                    **info,
                    **scores,
                    "score_seconds": time.perf_counter() - t0,
                    "load_before": load_before,
                    "load_after": load_after,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                with RECORDS.open("a") as handle:
                    handle.write(json.dumps(record, default=float) + "\n")
                print(
                    f"{n_cells:>9,} {m:12s} seed {seed}: {info['seconds']:.0f} s, "
                    f"{info['peak_rss_mb']:.0f} MB, KMeans {record['kmeans_ari']:.3f}, "
                    f"Leiden best {record['leiden_ari_best']:.3f}, "
                    f"verdict {record.get('verdict', '-')}",
                    flush=True,
                )


# ---------------------------------------------------------------------------- table


def _cell(values, fmt: str) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return ""
    if len(values) > 1:
        return f"{np.mean(values):{fmt}} ± {np.std(values, ddof=1):{fmt}}"
    return f"{values[0]:{fmt}}"


def cmd_table(args: argparse.Namespace) -> None:
    """The scale-curve table from the records (current method definitions only)."""
    from records import current_records

    df = current_records(_methods(), RECORDS)
    if df.empty:
        sys.exit(f"no records in {RECORDS}: run `bench_scale_curve.py run` first")
    print(
        "| cells | method | seeds | wall s | / scVI | train s | peak RSS MB | epochs "
        "| stop | KMeans ARI | Leiden ARI (best res.) | AU / latent | verdict |"
    )
    print("|---" * 13 + "|")
    shown = [m for m in ORDER if m in set(df["method"])]
    shown += sorted(set(df["method"]) - set(ORDER))
    for n_cells in sorted(df["n_cells"].unique()):
        at = df[df["n_cells"] == n_cells]
        scvi = at[at["method"] == "scvi"]["seconds"]
        for m in shown:
            runs = at[at["method"] == m]
            if runs.empty:
                continue
            ratio = ""
            if len(scvi) and m != "scvi":
                ratio = f"{runs['seconds'].mean() / scvi.mean():.2g}"
            au = ""
            if "active_units" in runs and runs["active_units"].notna().any():
                au = f"{_cell(runs['active_units'], '.0f')} / {runs['n_latent'].iloc[0]:.0f}"
            verdicts = ""
            if "verdict" in runs and runs["verdict"].notna().any():
                counts = runs["verdict"].value_counts()
                verdicts = ", ".join(f"{v} x{c}" if c > 1 else v for v, c in counts.items())
            stops = ""
            if "stop_reason" in runs and runs["stop_reason"].notna().any():
                stops = ", ".join(sorted(set(runs["stop_reason"].dropna())))
            epochs = _cell(runs["epochs"], ".0f") if "epochs" in runs else ""
            cols = [
                f"{n_cells:,}",
                m,
                str(runs["seed"].nunique()),
                _cell(runs["seconds"], ".0f"),
                ratio,
                _cell(runs["train_seconds"], ".0f"),
                _cell(runs["peak_rss_mb"], ".0f"),
                epochs,
                stops,
                _cell(runs["kmeans_ari"], ".3f"),
                _cell(runs["leiden_ari_best"], ".3f"),
                au,
                verdicts,
            ]
            print("| " + " | ".join(cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="write the resampled files that are missing")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("run", help="train/embed and score the missing runs, interleaved")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--methods", nargs="+", default=list(ORDER))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--backed-from",
        type=int,
        default=1_000_000,
        help="VAEs read the counts on disk at this many cells and more",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("table", help="the markdown table of the records")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("one", help="(internal) one run in a fresh process")
    p.add_argument("--method", required=True, help="the method as JSON")
    p.add_argument("--path", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--backed", action="store_true")
    p.set_defaults(func=cmd_one)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
