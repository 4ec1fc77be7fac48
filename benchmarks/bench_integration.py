"""Batch integration on two datasets with batches: methods x seeds x datasets, scIB scores.

Usage (from the repository root, with scvi-tools, scib-metrics and harmonypy installed,
e.g. in .venv-bench)::

    PYTHONPATH=. python benchmarks/bench_integration.py run \\
        --methods pca harmony recommended rec_es400 --datasets cellbench kang --seeds 0 1 2
    PYTHONPATH=. python benchmarks/bench_integration.py table      # from the records
    PYTHONPATH=. python benchmarks/bench_integration.py table --methods pca harmony scvi

Datasets (``../shared/data``): CellBench (1,408 cells, 5 plates of 5 lung cancer cell
lines, a technical batch effect; batch ``batch``, labels ``cell_line``) and Kang IFN-beta
PBMCs (1,975 cells, batch = ``condition`` control/stimulated, labels ``cell_type``).
Each is read with the batch column and preprocessed once with the workflow's filters
(``config/config.yaml``) and batch-aware seurat_v3 HVG (cached under
``$SCVAE_INTEGRATION_DIR``, default ``/tmp/scvae-integration``).

Methods (``benchmarks/integration_methods.yaml``): workflow variants, candidate settings
(a base variant plus overrides), and the baselines PCA (50 PCs of log-normalized
counts, unintegrated), Harmony (on those PCs) and scVI (``scvae.baseline``'s path:
scvi-tools defaults with the batch key). Every embedding is scored by
``scvae.integration.scib_scores`` (scib-metrics as its ``Benchmarker`` calls them,
total = 0.6 bio + 0.4 batch, unscaled). VAE records also hold the collapse diagnostics
of ``scvae.diagnostics.diagnose`` (verdict, active units, MI, ``batch_in_z``: the kNN
accuracy of reading the batch from z) and the epochs trained.

All runs of one ``run`` call happen in this one process, one after another, with one
thread (the scIB metrics compile JAX code once per process). Records go to
``benchmarks/integration_records.jsonl`` (one JSON line per run, keyed by dataset,
method, the hash of its settings and seed); a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from records import current_records, method_hash, read_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.exists():
    SHARED = Path("/work/shared/data")
RECORDS = ROOT / "benchmarks" / "integration_records.jsonl"
METHODS = ROOT / "benchmarks" / "integration_methods.yaml"
WORK = Path(os.environ.get("SCVAE_INTEGRATION_DIR", "/tmp/scvae-integration"))

DATASETS = {
    "cellbench": {
        "path": SHARED / "cellbench_5batches_counts.h5ad",
        "batch_key": "batch",
        "label_key": "cell_line",
    },
    "kang": {
        "path": SHARED / "kang_ifnb_2conditions_counts.h5ad",
        "batch_key": "condition",
        "label_key": "cell_type",
    },
}
BATCH = "batch"  # the column read_dataset writes, whatever the input called it
PCA_COMPONENTS = 50


# ---------------------------------------------------------------------------- methods


def load_methods() -> dict[str, dict]:
    """Every method by name: ``{"kind": "vae"|"pca"|"harmony"|"scvi", ...}``."""
    from scvae.presets import PRESETS, preset_settings

    spec = yaml.safe_load(METHODS.read_text())
    # Candidates start from a preset's own settings; the presets themselves run as the
    # workflow runs them on data with batches (their batch-aware form applied).
    variants = {name: preset_settings(name) for name in PRESETS}
    methods: dict[str, dict] = {}
    for name in spec.get("variants") or []:
        methods[name] = {"kind": "vae", "settings": preset_settings(name, batches=True)}
    for name, extra in (spec.get("candidates") or {}).items():
        extra = dict(extra)
        base = dict(variants[extra.pop("base", "recommended")])
        methods[name] = {"kind": "vae", "settings": {**base, **extra}}
    for name, kwargs in (spec.get("baselines") or {}).items():
        kind = name.split("_")[0]
        if kind not in ("pca", "harmony", "scvi"):
            sys.exit(f"baseline {name!r}: the name must start with pca, harmony or scvi")
        methods[name] = {"kind": kind, "kwargs": kwargs or {}}
    return methods


# ---------------------------------------------------------------------------- data


def dataset(name: str):
    """The preprocessed AnnData of one dataset (cached under WORK), ``obs["batch"]`` set."""
    import anndata as ad

    path = WORK / f"{name}.h5ad"
    if path.exists():
        return ad.read_h5ad(path)
    from scvae.config import preprocess_settings
    from scvae.data.batches import read_dataset
    from scvae.data.h5ad import write_h5ad
    from scvae.preprocess.memory import preprocess

    spec = DATASETS[name]
    adata = read_dataset(spec["path"], batch_key=spec["batch_key"], label_key=spec["label_key"])
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    preprocess(adata, **preprocess_settings(config), batch_key=BATCH)
    WORK.mkdir(parents=True, exist_ok=True)
    write_h5ad(adata, path)
    return adata


# ---------------------------------------------------------------------------- runs


def _run_vae(adata, settings: dict, seed: int) -> tuple[np.ndarray, dict]:
    import scvae
    from scvae.diagnostics.suite import diagnose

    model = scvae.train(
        adata, batch_key=BATCH, progress=False, **{**settings, "seed": seed, "threads": 1}
    )
    X = model.get_latent(adata)
    diag = diagnose(model, adata, batch_key=BATCH)
    biz = diag.get("batch_in_z", {})
    info = {
        "epochs": model.summary["epochs"],
        "stopped_early": model.summary["stopped_early"],
        "train_seconds": model.summary["train_seconds"],
        "n_latent": int(X.shape[1]),
        "active_units": diag["active_units"],
        "mi": diag["mi"],
        "mi_cap": diag["mi_cap"],
        "kl_total": diag["kl_total"],
        "verdict": diag["verdict"],
        "verdict_reason": diag["verdict_reason"],
        "iwae_val": diag["iwae_ll_per_cell"],
        "val_elbo": model.summary["final_val_elbo"],
        "batch_in_z": biz.get("accuracy"),
        "batch_chance": biz.get("chance"),
    }
    return X, info


def _embed(adata, method: dict, seed: int) -> tuple[np.ndarray, dict]:
    from scvae import baseline

    kind, kwargs = method["kind"], method.get("kwargs", {})
    if kind == "vae":
        return _run_vae(adata, method["settings"], seed)
    if kind == "pca":
        n = kwargs.get("n_components", PCA_COMPONENTS)
        return baseline.pca_embedding(adata, n_components=n, seed=seed), {"n_latent": n}
    if kind == "harmony":
        n = kwargs.get("n_components", PCA_COMPONENTS)
        X = baseline.harmony_embedding(
            adata, batch_keys=[BATCH], n_components=n, seed=seed, n_threads=1
        )
        return X, {"n_latent": n}
    X, used = baseline.scvi_embedding(adata, batch_key=BATCH, seed=seed, n_threads=1, **kwargs)
    return X, {"n_latent": used["n_latent"], "epochs": used["max_epochs"]}


def run_one(adata, X_pre: np.ndarray, method: dict, seed: int) -> dict:
    """Train or embed, score, and return one record."""
    from scvae.diagnostics.batch import batch_in_latent
    from scvae.integration import scib_scores

    started = time.perf_counter()
    X, info = _embed(adata, method, seed)
    embed_seconds = time.perf_counter() - started
    if "batch_in_z" not in info:  # the same kNN accuracy for the baselines
        b = batch_in_latent(X, adata.obs[BATCH].to_numpy(), seed=seed)
        info["batch_in_z"], info["batch_chance"] = b["accuracy"], b["chance"]
    t = time.perf_counter()
    scores = scib_scores(X, adata.obs[BATCH].to_numpy(), adata.obs["label"].to_numpy(), X_pre=X_pre)
    record = {**info, **scores}
    record["embed_seconds"] = embed_seconds
    record["scib_seconds"] = time.perf_counter() - t
    record["seconds"] = time.perf_counter() - started
    record["n_cells"] = int(adata.n_obs)
    return record


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from scvae.integration import unintegrated_pca

    torch.set_num_threads(1)
    methods = load_methods()
    unknown = [m for m in args.methods if m not in methods]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {sorted(methods)}")
    done = {(r["dataset"], r["method_hash"], r["seed"]) for r in read_records(RECORDS)}
    tasks = [
        (d, m, seed)
        for d in args.datasets
        for seed in args.seeds
        for m in args.methods
        if (d, method_hash(methods[m]), seed) not in done
    ]
    if args.seed_major is False:  # method by method: every seed of one before the next
        tasks.sort(key=lambda t: (args.datasets.index(t[0]), args.methods.index(t[1]), t[2]))
    print(f"{len(tasks)} runs to do", flush=True)
    data: dict[str, tuple] = {}
    for name, m, seed in tasks:
        if name not in data:
            adata = dataset(name)
            data[name] = (adata, unintegrated_pca(adata.layers["counts"]))
        adata, X_pre = data[name]
        try:
            record = run_one(adata, X_pre, methods[m], seed)
        except Exception as err:  # a failed run is reported, the others go on
            print(f"FAILED {name} {m} seed {seed}: {type(err).__name__}: {err}", flush=True)
            continue
        record = {
            "dataset": name,
            "method": m,
            "method_hash": method_hash(methods[m]),
            "seed": seed,
            **record,
        }
        with RECORDS.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"{name:10s} {m:22s} seed {seed}: total {record['scib_total']:.3f} "
            f"bio {record['scib_bio']:.3f} batch {record['scib_batch']:.3f} "
            f"batch_in_z {record['batch_in_z']:.3f} "
            f"{record.get('verdict', '')} AU {record.get('active_units', '')}"
            f"/{record['n_latent']} epochs {record.get('epochs', '')} "
            f"({record['seconds']:.0f} s)",
            flush=True,
        )


# ---------------------------------------------------------------------------- tables


def _fmt(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return ""
    if len(values) > 1:
        return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"
    return f"{values.mean():.{digits}f}"


def cmd_table(args: argparse.Namespace) -> None:
    methods = load_methods()
    df = current_records(methods, RECORDS)
    if df.empty:
        sys.exit("no records yet: run `bench_integration.py run` first")
    shown = args.methods or list(dict.fromkeys(m for m in methods if m in set(df["method"])))
    print(
        "\nscIB (scib-metrics, unscaled; total = 0.6 bio + 0.4 batch), mean ± s.d. over "
        "seeds; batch_in_z = kNN accuracy of the batch from the embedding (lower is "
        "better mixed); AU = active units\n"
    )
    print(
        "| dataset | method | seeds | total | bio | batch | batch_in_z | verdicts | AU / n_latent "
        "| MI | epochs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in [d for d in DATASETS if d in set(df["dataset"])]:
        for m in shown:
            runs = df[(df["dataset"] == d) & (df["method"] == m)].sort_values("seed")
            if runs.empty:
                continue
            verdicts, au, mi = "", "", ""
            if "verdict" in runs and runs["verdict"].notna().any():
                counts = runs["verdict"].value_counts()
                verdicts = ", ".join(f"{v} x{n}" for v, n in counts.items())
                au = (
                    f"{runs['active_units'].min():.0f}-{runs['active_units'].max():.0f} / "
                    f"{runs['n_latent'].iloc[0]:.0f}"
                )
                mi = _fmt(runs["mi"], 2)
            epochs = (
                _fmt(runs["epochs"], 0) if "epochs" in runs and runs["epochs"].notna().any() else ""
            )
            seeds = ",".join(str(s) for s in runs["seed"])
            print(
                f"| {d} | {m} | {seeds} | {_fmt(runs['scib_total'])} | {_fmt(runs['scib_bio'])} "
                f"| {_fmt(runs['scib_batch'])} | {_fmt(runs['batch_in_z'])} | {verdicts} | {au} "
                f"| {mi} | {epochs} |"
            )
    if args.metrics:
        cols = [f"scib_{m}" for m in args.metrics]
        print("\nIndividual metrics (mean over seeds)\n")
        print("| dataset | method | " + " | ".join(args.metrics) + " |")
        print("|---" * (len(cols) + 2) + "|")
        means = df.groupby(["dataset", "method"])[cols].mean()
        for d in [d for d in DATASETS if d in set(df["dataset"])]:
            for m in shown:
                if (d, m) in means.index:
                    row = means.loc[(d, m)]
                    print(f"| {d} | {m} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="embed and score the missing runs, in this process")
    p.add_argument("--methods", nargs="+", required=True, help="method names")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--seed-major",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run every method at one seed before the next seed (default), or "
        "--no-seed-major: every seed of a method before the next method",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("table", help="mean ± s.d. per dataset and method")
    p.add_argument("--methods", nargs="+")
    p.add_argument(
        "--metrics",
        nargs="*",
        default=[],
        help="also a table of these individual metrics (names without scib_)",
    )
    p.set_defaults(func=cmd_table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
