"""Latent quality on five labelled datasets: methods x seeds x datasets, one table.

Usage (from the repository root; scVI needs the `scvi` extra, e.g. in .venv-bench)::

    python benchmarks/bench_quality.py run --methods recommended vanilla pca scvi \\
        --seeds 0 1 2 3 4 --jobs 2
    python benchmarks/bench_quality.py table          # the tables, from the records
    python benchmarks/bench_quality.py lodo --candidates recommended rec_previous ...
    python benchmarks/bench_quality.py ablation --candidates recommended rec_mlp ...

The suite: PBMC 4k, mouse bladder and worm neurons (X/Y files), and the two conditions
of the Kang PBMC file as two single-batch datasets (control, stimulated), all from
``../shared/data``, preprocessed with the workflow's filters (``config/config.yaml``).

Methods (``benchmarks/quality_methods.yaml``): every preset of the package
(``scvae.presets``: package defaults, then the preset), extra candidate settings, PCA
10/20/50 (the workflow's baseline), and scVI (scvi-tools defaults; ``scvi_<tag>`` rows
change one setting). The VAE and scVI train on the same cells (the VAE's training split;
its validation cells are where the held-out IWAE log-likelihood of the VAE and
``get_marginal_ll`` of scVI are measured). Every embedding is scored by the same code:
KMeans ARI/NMI (mean over 5 fits, k = number of labels), Leiden ARI/NMI at resolutions
0.25-2 and the best of them (scIB's choice), collapse diagnostics for the VAEs.

Records go to ``benchmarks/quality_records.jsonl`` (one JSON line per run, keyed by
dataset, method, the hash of its settings and seed); a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from records import current_records, method_hash, read_records

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECORDS = ROOT / "benchmarks" / "quality_records.jsonl"
METHODS = ROOT / "benchmarks" / "quality_methods.yaml"
WORK = Path(os.environ.get("SCVAE_BENCH_DIR", "/tmp/scvae-quality"))

DATASETS = {
    "pbmc4k": {"path": SHARED / "pbmc4k_top2000.h5"},
    "mouse_bladder": {"path": SHARED / "mouse_bladder_top2000.h5"},
    "worm_neuron": {"path": SHARED / "worm_neuron_top2000.h5"},
    "kang_control": {
        "path": SHARED / "kang_ifnb_2conditions_counts.h5ad",
        "label_key": "cell_type",
        "subset": ("condition", "control"),
    },
    "kang_stimulated": {
        "path": SHARED / "kang_ifnb_2conditions_counts.h5ad",
        "label_key": "cell_type",
        "subset": ("condition", "stimulated"),
    },
}
PCA_COMPONENTS = (10, 20, 50)
KMEANS_FITS = 5


# ---------------------------------------------------------------------------- methods


def load_methods() -> dict[str, dict]:
    """Every method by name: ``{"kind": "vae"|"pca"|"scvi", ...}``."""
    from scvae.presets import PRESETS, preset_settings

    spec = yaml.safe_load(METHODS.read_text())
    methods: dict[str, dict] = {}
    for name in PRESETS:
        methods[name] = {"kind": "vae", "settings": preset_settings(name)}
    for name, extra in (spec.get("candidates") or {}).items():
        base = dict(methods[extra.pop("base", "recommended")]["settings"])
        methods[name] = {"kind": "vae", "settings": {**base, **extra}}
    for n in PCA_COMPONENTS:
        methods[f"pca{n}"] = {"kind": "pca", "n_components": n}
    for name, kwargs in (spec.get("scvi") or {}).items():
        methods[name] = {"kind": "scvi", "kwargs": kwargs or {}}
    return methods


# ---------------------------------------------------------------------------- data


def dataset(name: str):
    """The preprocessed AnnData of one dataset of the suite (cached under WORK)."""
    import anndata as ad

    path = WORK / f"{name}.h5ad"
    if path.exists():
        return ad.read_h5ad(path)
    from scvae.config import preprocess_settings
    from scvae.data.h5ad import write_h5ad
    from scvae.data.readers import read_counts
    from scvae.preprocess.memory import preprocess

    spec = DATASETS[name]
    adata = read_counts(spec["path"], label_key=spec.get("label_key"))
    if "subset" in spec:
        key, value = spec["subset"]
        adata = adata[adata.obs[key] == value].copy()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    preprocess(adata, **preprocess_settings(config))
    write_h5ad(adata, path)
    return adata


# ---------------------------------------------------------------------------- runs


def _scores(X: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    from scvae.metrics import kmeans_ari_nmi
    from scvae.scores import leiden_resolution_scores

    km = kmeans_ari_nmi(X, labels, rng=seed, n_repeats=KMEANS_FITS)
    out = {"kmeans_ari": km["ari"], "kmeans_nmi": km["nmi"]}
    out.update(leiden_resolution_scores(X, labels, seed=seed))
    return out


def _run_vae(adata, settings: dict, seed: int) -> tuple[np.ndarray, dict]:
    import scvae
    from scvae.diagnostics.suite import diagnose

    model = scvae.train(adata, progress=False, **{**settings, "seed": seed, "threads": 1})
    X = model.get_latent(adata)
    diag = diagnose(model, adata)
    info = {
        "epochs": model.summary["epochs"],
        "stopped_early": model.summary["stopped_early"],
        "train_seconds": model.summary["train_seconds"],
        "n_latent": int(X.shape[1]),
        "active_units": diag["active_units"],
        "mi": diag["mi"],
        "verdict": diag["verdict"],
        "iwae_val": diag["iwae_ll_per_cell"],
        "val_elbo": model.summary["final_val_elbo"],
    }
    return X, info


def _run_scvi(adata, kwargs: dict, seed: int) -> tuple[np.ndarray, dict]:
    import anndata as ad
    import scipy.sparse as sp
    import scvi
    import torch

    from scvae.training.loop import split_cells

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    scvi.settings.verbosity = 30
    kwargs = dict(kwargs)
    train_kwargs = kwargs.pop("train", {})
    val_fraction = 0.1
    train_idx, val_idx = split_cells(adata.n_obs, val_fraction, seed)
    counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
    full = ad.AnnData(X=counts, obs=pd.DataFrame(index=adata.obs_names))
    full.var_names = adata.var_names
    train = full[train_idx].copy()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, **kwargs)
    started = time.perf_counter()
    # The VAE's training cells only; scVI's own validation split is turned off so that
    # both models see the same cells (scVI's defaults use no early stopping).
    model.train(train_size=1.0, enable_progress_bar=False, **train_kwargs)
    seconds = time.perf_counter() - started
    X = model.get_latent_representation(full)
    marginal = model.get_marginal_ll(full, indices=val_idx, n_mc_samples=100)
    history = model.history.get("train_loss_epoch")
    info = {
        "epochs": int(len(history)) if history is not None else None,
        "train_seconds": seconds,
        "n_latent": int(X.shape[1]),
        "iwae_val": float(marginal),
    }
    return np.asarray(X, dtype=np.float32), info


def run_one(name: str, method: dict, seed: int) -> dict:
    """Train or embed, score, and return one record."""
    import torch

    torch.set_num_threads(1)
    adata = dataset(name)
    labels = adata.obs["label"].astype(str).to_numpy()
    started = time.perf_counter()
    if method["kind"] == "vae":
        X, info = _run_vae(adata, method["settings"], seed)
    elif method["kind"] == "scvi":
        X, info = _run_scvi(adata, method["kwargs"], seed)
    else:
        from scvae.baseline import pca_embedding

        X, info = pca_embedding(adata, n_components=method["n_components"], seed=0), {}
    record = {**info, **_scores(X, labels, seed)}
    record["seconds"] = time.perf_counter() - started
    record["n_cells"] = int(adata.n_obs)
    return record


def _task(args: tuple) -> tuple:
    name, method_name, method, seed = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        return args, run_one(name, method, seed), None
    except Exception as err:  # a failed run is reported, the others go on
        return args, None, f"{type(err).__name__}: {err}"


def cmd_run(args: argparse.Namespace) -> None:
    methods = load_methods()
    names = []
    for m in args.methods:
        if m == "pca":
            names += [f"pca{n}" for n in PCA_COMPONENTS]
        elif m not in methods:
            sys.exit(f"unknown method {m!r}; known: {sorted(methods)}")
        else:
            names.append(m)
    done = {(r["dataset"], r["method_hash"], r["seed"]) for r in read_records(RECORDS)}
    tasks = []
    for name in args.datasets:
        for m in names:
            for seed in args.seeds:
                key = (name, method_hash(methods[m]), seed)
                if key not in done:
                    tasks.append((name, m, methods[m], seed))
    # Preprocess each dataset once before the workers read it.
    for name in {t[0] for t in tasks}:
        dataset(name)
    print(f"{len(tasks)} runs to do", flush=True)
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    # Fresh interpreters: a fork after torch and numba are loaded can deadlock.
    spawn = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool:
        for (name, m, method, seed), record, error in pool.map(_task, tasks):
            if error:
                print(f"FAILED {name} {m} seed {seed}: {error}", flush=True)
                continue
            record = {
                "dataset": name,
                "method": m,
                "method_hash": method_hash(method),
                "seed": seed,
                **record,
            }
            with RECORDS.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"{name:16s} {m:24s} seed {seed}: KMeans {record['kmeans_ari']:.3f} "
                f"Leiden best {record['leiden_ari_best']:.3f} ({record['seconds']:.0f} s)",
                flush=True,
            )


# ---------------------------------------------------------------------------- tables


def _fmt(mean: float, sd: float, n: int) -> str:
    if n > 1 and np.isfinite(sd):
        return f"{mean:.3f} ± {sd:.3f}"
    return f"{mean:.3f}"


def reference(df: pd.DataFrame, metric: str) -> pd.Series:
    """Per dataset, the better of scVI (defaults) and the best PCA on ``metric``."""
    means = df.groupby(["dataset", "method"])[metric].mean().unstack("method")
    pca = means[[f"pca{n}" for n in PCA_COMPONENTS if f"pca{n}" in means]].max(axis=1)
    scvi = means["scvi"] if "scvi" in means else pd.Series(np.nan, index=means.index)
    return pd.concat([pca, scvi], axis=1).max(axis=1)


def cmd_table(args: argparse.Namespace) -> None:
    methods = load_methods()
    df = current_records(methods, RECORDS)
    if df.empty:
        sys.exit("no records yet: run `bench_quality.py run` first")
    shown = args.methods or sorted(df["method"].unique())
    for metric in args.metrics:
        means = df.groupby(["dataset", "method"])[metric].agg(["mean", "std", "count"])
        print(f"\n{metric} (mean ± s.d. over seeds; n seeds in brackets)\n")
        print("| dataset | " + " | ".join(shown) + " |")
        print("|---" * (len(shown) + 1) + "|")
        for d in sorted(df["dataset"].unique()):
            cells = []
            for m in shown:
                if (d, m) in means.index:
                    row = means.loc[(d, m)]
                    cells.append(
                        f"{_fmt(row['mean'], row['std'], row['count'])} [{int(row['count'])}]"
                    )
                else:
                    cells.append("")
            print(f"| {d} | " + " | ".join(cells) + " |")


def cmd_lodo(args: argparse.Namespace) -> None:
    from scvae.selection import leave_one_dataset_out

    methods = load_methods()
    df = current_records(methods, RECORDS)
    out = leave_one_dataset_out(df, args.candidates, args.criterion)
    refs = {m: reference(df, m) for m in ("kmeans_ari", "leiden_ari_best")}
    print(
        "\n| held-out dataset | chosen on the other four | KMeans ARI | best of scVI/PCA | "
        "Leiden ARI (best res.) | best of scVI/PCA | AU / n_latent | verdicts |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for _, row in out.iterrows():
        d, c = row["dataset"], row["chosen"]
        runs = df[(df.dataset == d) & (df.method == c)]
        verdicts = ", ".join(f"{v} x{n}" for v, n in runs["verdict"].value_counts().items())
        au = f"{runs['active_units'].min():.0f}-{runs['active_units'].max():.0f} / " + (
            f"{runs['n_latent'].iloc[0]:.0f}"
        )
        print(
            f"| {d} | {c} | {_fmt(row['kmeans_ari_mean'], row['kmeans_ari_sd'], row['n_seeds'])}"
            f" | {refs['kmeans_ari'][d]:.3f} | "
            f"{_fmt(row['leiden_ari_best_mean'], row['leiden_ari_best_sd'], row['n_seeds'])} | "
            f"{refs['leiden_ari_best'][d]:.3f} | {au} | {verdicts} |"
        )


def cmd_ablation(args: argparse.Namespace) -> None:
    """Each candidate's change in KMeans / Leiden ARI from ``--base``, and held-out IWAE."""
    df = current_records(load_methods(), RECORDS)
    means = df.groupby(["method", "dataset"])[["kmeans_ari", "leiden_ari_best", "iwae_val"]]
    means, seeds = means.mean(), df.groupby(["method", "dataset"])["seed"].nunique()
    datasets = [d for d in DATASETS if d in set(df["dataset"])]
    print(f"\n| change from {args.base} | seeds | " + " | ".join(datasets) + " | mean |")
    print("|---|---|" + "---|" * (len(datasets) + 1))
    for m in args.candidates:
        cells, deltas = [], []
        for d in datasets:
            if (m, d) in means.index and (args.base, d) in means.index:
                delta = means.loc[(m, d)] - means.loc[(args.base, d)]
                cells.append(f"{delta['kmeans_ari']:+.3f} / {delta['leiden_ari_best']:+.3f}")
                deltas.append(delta)
            else:
                cells.append("")
        n = sorted({int(seeds[(m, d)]) for d in datasets if (m, d) in seeds.index})
        mean = pd.DataFrame(deltas).mean() if len(deltas) == len(datasets) else None
        total = (
            "" if mean is None else f"{mean['kmeans_ari']:+.3f} / {mean['leiden_ari_best']:+.3f}"
        )
        print(f"| {m} | {'-'.join(map(str, n))} | " + " | ".join(cells) + f" | {total} |")
    print("\n| held-out log-likelihood per cell | " + " | ".join(datasets) + " |")
    print("|---|" + "---|" * len(datasets))
    for m in args.likelihood:
        cells = [
            f"{means.loc[(m, d), 'iwae_val']:.1f}" if (m, d) in means.index else ""
            for d in datasets
        ]
        print(f"| {m} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train/embed and score the missing runs")
    p.add_argument("--methods", nargs="+", required=True, help="method names, or pca")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=2)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("table", help="mean ± s.d. per dataset and method")
    p.add_argument("--methods", nargs="+")
    p.add_argument("--metrics", nargs="+", default=["kmeans_ari", "leiden_ari_best"])
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("lodo", help="leave-one-dataset-out choice among candidates")
    p.add_argument("--candidates", nargs="+", required=True)
    p.add_argument("--criterion", nargs="+", default=["kmeans_ari", "leiden_ari_best"])
    p.set_defaults(func=cmd_lodo)
    p = sub.add_parser("ablation", help="change of each candidate from a base; IWAE table")
    p.add_argument("--base", default="rec_previous")
    p.add_argument("--candidates", nargs="+", required=True)
    p.add_argument("--likelihood", nargs="+", default=["recommended", "rec_previous", "scvi"])
    p.set_defaults(func=cmd_ablation)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
