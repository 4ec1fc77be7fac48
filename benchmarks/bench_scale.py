"""Scale and speed: out-of-core training up to 10^6 cells, and scvae vs scvi-tools.

Usage (from the repository root)::

    python benchmarks/bench_scale.py                       # every part, ~1-2 h on 2 cores
    python benchmarks/bench_scale.py --parts throughput --sizes 10000 100000
    python benchmarks/bench_scale.py --parts compare batch --seeds 0 1 2

Parts (each measurement runs in a fresh subprocess, so peak RSS is per run):

``throughput``
    One training epoch (``scvae.train``, ``max_epochs=1``: includes the input checks,
    the validation pass and the setup) on synthetic files of ``--sizes`` cells x 2000
    genes (:mod:`scvae.data.synthetic`, written to ``--data-dir`` on first use), at each of
    ``--batch-sizes``, with the counts in memory (``anndata.read_h5ad``) and on disk
    (``scvae.data.h5ad.read_h5ad(backed=True)``, block shuffle). Reports cells/s, seconds per
    1,000 cells and peak RSS against the size of the CSR arrays.
``compare``
    PBMC 4k (``../shared/data/pbmc4k_top2000.h5``, the workflow's preprocessing), the
    same architecture (1 hidden layer of 128, n_latent 10, NB, batch 128) and the same
    ``--epochs``: scvae (default: one-pass ELBO, foreach Adam), scvae through Pyro's
    trace with the for-loop Adam (the code before this benchmark's optimizations: same
    numbers, slower), a plain-torch loop of the same VAE module (the floor: the loss
    computed directly from ``module.inference``/``module.generative``), and scvi-tools
    SCVI (in ``--bench-python``, a separate environment, see benchmarks/README.md).
    Then each tool at its own defaults (scvae: the ``recommended`` preset,
    ``scvae.presets``; SCVI: ``SCVI(adata).train()``). KMeans ARI/NMI on the latent
    means (k = number of labels).
``loader``
    Reading minibatches of 128 without training: in memory, on disk with the block
    shuffle, and on disk with a per-row shuffle (one read per cell).
``preprocess``
    The workflow's preprocess stage (``run_preprocess``: QC plot, filters, 1,000 highly
    variable genes by seurat_v3, write) streamed from disk
    (:mod:`scvae.preprocess.streamed`) and, up to 10^5 cells, in memory.
``batch``
    The ``recommended`` variant at batch sizes 128, 256, 512 and 1024 (everything else
    at its config value): epochs run, time, cells/s, validation ELBO, KMeans ARI.
``diagnostics``
    ``scvae.diagnostics.suite.diagnose`` (MI on 10,000 cells, IWAE K=100 on the validation
    split, decoder Jacobian on 500 cells) on a model of 100,000 synthetic cells.

Results go to ``--out`` (JSON) and are printed as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PBMC = ROOT.parent / "shared" / "data" / "pbmc4k_top2000.h5"
ARCHITECTURE = {
    "n_latent": 10,
    "n_hidden": 128,
    "n_layers": 1,
    "decoder_layers": 1,
    "decoder_hidden": 0,
    "dropout": 0.1,
    "likelihood": "nb",
    "dispersion": "gene",
    "library": "observed",
    "skip": "none",
    "bn_gamma": 0.0,
    "encoder_input": "log1p",
}


# --------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load() -> float:
    """1-minute load average of the machine (other users' jobs slow every timing)."""
    return round(os.getloadavg()[0], 2)


def synthetic_path(data_dir: Path, n_cells: int, n_genes: int = 2000) -> Path:
    return data_dir / f"synthetic_{n_cells}x{n_genes}.h5ad"


def csr_bytes(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return sum(f["X"][k].id.get_storage_size() for k in ("data", "indices", "indptr"))


def config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def pbmc():
    """PBMC 4k with the workflow's preprocessing, and its labels."""
    from scvae.config import preprocess_settings
    from scvae.data.readers import read_counts
    from scvae.preprocess.memory import preprocess

    adata = read_counts(PBMC)
    preprocess(adata, **preprocess_settings(config()))
    return adata, adata.obs["label"].to_numpy()


def scores(z, labels) -> dict:
    from scvae.metrics import kmeans_ari_nmi

    s = kmeans_ari_nmi(z, labels, rng=0)
    return {"ari": s["ari"], "nmi": s["nmi"]}


# --------------------------------------------------------------------------- workers


def worker_generate(a: dict) -> dict:
    from scvae.data.synthetic import write_synthetic_h5ad

    started = time.perf_counter()
    write_synthetic_h5ad(a["path"], a["n_cells"], a["n_genes"], seed=0)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def worker_epoch(a: dict) -> dict:
    """One epoch of scvae.train on a synthetic file, in memory or backed."""
    import anndata
    import torch

    import scvae
    from scvae.data.h5ad import read_h5ad
    from scvae.presets import preset_settings

    torch.set_num_threads(a["threads"])
    load0 = load()
    base = rss_mb()
    started = time.perf_counter()
    if a["mode"] == "memory":
        adata = anndata.read_h5ad(a["path"])
    else:
        adata = read_h5ad(a["path"], backed=True)
    load_seconds = time.perf_counter() - started
    loaded = rss_mb()
    settings = preset_settings("recommended")
    settings.update(ARCHITECTURE)
    settings.update(
        batch_size=a["batch_size"],
        max_epochs=1,
        early_stopping=False,
        threads=a["threads"],
        device="cpu",
    )
    started = time.perf_counter()
    model = scvae.train(adata, progress=False, **settings)
    wall = time.perf_counter() - started
    s = model.summary
    return {
        "n_cells": adata.n_obs,
        "n_train": s["n_train_cells"],
        "epoch_seconds": s["train_seconds"],
        "train_wall_seconds": wall,
        "load_seconds": load_seconds,
        "cells_per_s": s["n_train_cells"] / s["train_seconds"],
        "rss_base_mb": base,
        "rss_loaded_mb": loaded,
        "peak_rss_mb": peak_rss_mb(),
        "csr_mb": csr_bytes(Path(a["path"])) / 2**20,
        "load_avg": [load0, load()],
    }


def _torch_fit(adata, settings: dict) -> tuple[object, float, int, int]:
    """The plain-torch floor: scvae's VAE module and loss, no Pyro, no bookkeeping."""
    import numpy as np
    import torch

    from scvae.data.loaders import CountBatches, counts_matrix
    from scvae.module import VAE
    from scvae.training.loop import split_cells
    from scvae.training.schedules import KLSchedule
    from scvae.training.settings import split_settings

    X = counts_matrix(adata)
    model_cfg, cfg = split_settings(settings, X.shape[1])
    torch.manual_seed(cfg.seed)
    train_idx, val_idx = split_cells(X.shape[0], cfg.val_fraction, cfg.seed)
    log_lib = np.log(np.maximum(np.asarray(X[train_idx].sum(1)).ravel(), 1.0))
    module = VAE(
        model_cfg,
        library_log_mean=float(log_lib.mean()),
        library_log_scale=float(max(log_lib.std(), 1e-3)),
    )
    loader = CountBatches(X, train_idx, cfg.batch_size, shuffle=True, seed=cfg.seed)
    val = CountBatches(X, val_idx, max(cfg.batch_size, 1024))
    opt = torch.optim.Adam(
        module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, foreach=True
    )
    schedule = KLSchedule(
        kind=cfg.kl_schedule,
        beta=cfg.beta,
        total_steps=cfg.max_epochs * len(loader),
        warmup_fraction=cfg.warmup_fraction,
        n_cycles=cfg.n_cycles,
        ratio=cfg.cycle_ratio,
    )

    def terms(x):
        qz = module.inference(x)["qz"]
        z = qz.rsample()
        recon = module.generative(z, module.library(x), x)["px"].log_prob(x).sum(-1)
        kl = 0.5 * (qz.loc.square() + qz.scale.square() - 1.0) - qz.scale.log()
        return recon, kl

    step = 0
    started = time.perf_counter()
    for epoch in range(cfg.max_epochs):
        module.train()
        for x, _ in loader.epoch(epoch):
            recon, kl = terms(x)
            kl_dims = kl.mean(0)
            if cfg.free_bits > 0:
                kl_dims = kl_dims.clamp(min=cfg.free_bits)
            loss = -recon.mean() + schedule(step) * kl_dims.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_norm)
            opt.step()
            step += 1
        module.eval()
        with torch.no_grad():
            for x, _ in val.epoch(0):
                terms(x)
    seconds = time.perf_counter() - started
    module.eval()
    with torch.no_grad():
        z = np.concatenate(
            [
                module.inference(x)["qz"].loc.numpy()
                for x, _ in CountBatches(X, np.arange(X.shape[0]), 1024).epoch(0)
            ]
        )
    return z, seconds, len(train_idx), cfg.max_epochs


def worker_fit(a: dict) -> dict:
    """Train one tool on PBMC 4k; time it and score its latent space."""
    import torch

    torch.set_num_threads(a["threads"])
    adata, labels = pbmc()
    load0 = load()
    tool = a["tool"]
    if tool == "scvi":
        return _scvi_fit(adata, labels, a) | {"load_avg": [load0, load()]}
    import scvae
    from scvae.presets import preset_settings
    from scvae.training.objective import FreeBitsELBO

    settings = {**preset_settings("recommended"), "seed": a["seed"]}
    if not a.get("defaults"):
        settings.update(ARCHITECTURE)
        settings.update(batch_size=128, max_epochs=a["epochs"], early_stopping=False)
    if a.get("batch_size"):
        settings["batch_size"] = a["batch_size"]
    settings.update(threads=a["threads"], device="cpu")
    if tool == "torch":
        started = time.perf_counter()
        z, seconds, n_train, epochs = _torch_fit(adata, settings)
        extra = {"wall_seconds": time.perf_counter() - started}
    else:
        if tool == "scvae_traced":
            # The reference path: Pyro's trace and torch's default (for-loop) Adam.
            FreeBitsELBO.direct = False
            adam = torch.optim.Adam
            torch.optim.Adam = lambda *p, **k: adam(*p, **{**k, "foreach": False})
        started = time.perf_counter()
        model = scvae.train(adata, progress=False, **settings)
        wall = time.perf_counter() - started
        z = model.get_latent(adata)
        n_train, epochs = model.summary["n_train_cells"], model.summary["epochs"]
        seconds = model.summary["train_seconds"]  # the epochs (with validation), no setup
        extra = {"final_val_elbo": model.summary["final_val_elbo"], "wall_seconds": wall}
    return {
        "tool": tool,
        "seconds": seconds,
        "epochs": epochs,
        "n_train": n_train,
        "batch_size": settings["batch_size"],
        "cells_per_s": n_train * epochs / seconds,
        **scores(z, labels),
        **extra,
        "peak_rss_mb": peak_rss_mb(),
        "load_avg": [load0, load()],
    }


def _scvi_fit(adata, labels, a: dict) -> dict:
    import logging
    import warnings

    import anndata
    import numpy as np
    import scvi
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    scvi.settings.seed = a["seed"]
    scvi.settings.num_threads = a["threads"]
    torch.set_num_threads(a["threads"])
    work = anndata.AnnData(adata.layers["counts"].copy())
    scvi.model.SCVI.setup_anndata(work)
    if a.get("defaults"):
        model = scvi.model.SCVI(work)
        kwargs = {}
    else:
        model = scvi.model.SCVI(
            work, n_hidden=128, n_layers=1, n_latent=10, dropout_rate=0.1, gene_likelihood="nb"
        )
        kwargs = {"max_epochs": a["epochs"], "batch_size": 128}
    started = time.perf_counter()
    model.train(accelerator="cpu", devices=1, enable_progress_bar=False, **kwargs)
    seconds = time.perf_counter() - started
    epochs = int(model.history["elbo_train"].shape[0])
    n_train = int(round(0.9 * work.n_obs))
    z = np.asarray(model.get_latent_representation())
    return {
        "tool": "scvi",
        "seconds": seconds,
        "wall_seconds": seconds,
        "epochs": epochs,
        "n_train": n_train,
        "batch_size": 128,
        "gene_likelihood": model.module.gene_likelihood,
        "cells_per_s": n_train * epochs / seconds,
        **scores(z, labels),
        "peak_rss_mb": peak_rss_mb(),
        "versions": {"scvi-tools": scvi.__version__, "torch": torch.__version__},
    }


def worker_preprocess(a: dict) -> dict:
    """The workflow's preprocess stage on a synthetic file, streamed or in memory."""
    os.environ["SCVAE_BACKED_MIN_GB"] = "0" if a["mode"] == "streamed" else "inf"
    from scvae.stages.preprocess import run_preprocess

    out = Path(a["out"])
    started = time.perf_counter()
    run_preprocess(a["path"], out / "pre.h5ad", out / "qc.png", n_top_genes=a["n_top_genes"])
    seconds = time.perf_counter() - started
    import h5py

    with h5py.File(out / "pre.h5ad") as f:
        shape = tuple(int(v) for v in f["X"].attrs["shape"])
    (out / "pre.h5ad").unlink()
    return {
        "seconds": seconds,
        "shape": shape,
        "peak_rss_mb": peak_rss_mb(),
        "csr_mb": csr_bytes(Path(a["path"])) / 2**20,
    }


def worker_loader(a: dict) -> dict:
    """Reading minibatches only: in memory, on disk by block shuffle, on disk per row."""
    import anndata
    import numpy as np

    from scvae.data.loaders import BLOCK_SIZE, CountBatches
    from scvae.data.ondisk import H5CSR

    n_batches = a["n_batches"]
    out = {}
    for mode in ("memory", "backed_block", "backed_rows"):
        X = anndata.read_h5ad(a["path"]).X if mode == "memory" else H5CSR.open(a["path"])
        idx = np.arange(X.shape[0])
        block = BLOCK_SIZE if mode == "backed_block" else None
        loader = CountBatches(X, idx, a["batch_size"], shuffle=True, block_size=block)
        started = time.perf_counter()
        n = 0
        for _ in loader.epoch(0):
            n += 1
            if n == n_batches:
                break
        seconds = time.perf_counter() - started
        out[mode] = {"ms_per_batch": 1000 * seconds / n, "batches": n}
        del X
    return {"n_cells": a["n_cells"], "batch_size": a["batch_size"], **out}


def worker_diagnostics(a: dict) -> dict:
    """diagnose() on a model of the 100k-cell synthetic file, timed per measure."""
    import anndata
    import torch

    import scvae
    import scvae.diagnostics.suite as dg

    torch.set_num_threads(a["threads"])
    adata = anndata.read_h5ad(a["path"])
    model = scvae.train(
        adata,
        progress=False,
        max_epochs=1,
        batch_size=1024,
        threads=a["threads"],
        device="cpu",
        **ARCHITECTURE,
    )
    times: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            times[name] = times.get(name, 0.0) + time.perf_counter() - started
            return out

        return wrapper

    for name in ("encode", "mutual_information", "iwae_log_likelihood", "decoder_jacobian"):
        setattr(dg, name, timed(name, getattr(dg, name)))
    load0 = load()
    started = time.perf_counter()
    d = dg.diagnose(model, adata, k_iwae=100, n_mi=10_000, n_jacobian=500)
    total = time.perf_counter() - started
    return {
        "n_cells": adata.n_obs,
        "n_validation": d["n_validation_cells"],
        "seconds": total,
        "parts": times,
        "verdict": d["verdict"],
        "mi": d["mi"],
        "peak_rss_mb": peak_rss_mb(),
        "load_avg": [load0, load()],
    }


WORKERS = {
    "generate": worker_generate,
    "epoch": worker_epoch,
    "fit": worker_fit,
    "diagnostics": worker_diagnostics,
    "loader": worker_loader,
    "preprocess": worker_preprocess,
}


# ---------------------------------------------------------------------- orchestration


def run_worker(name: str, args: dict, python: str = sys.executable, timeout: float = 7200) -> dict:
    """Run a worker in a fresh process and return its result (or the error)."""
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--worker-args",
        json.dumps(args),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT ") :])
            out["process_seconds"] = time.perf_counter() - started
            return out
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": f"{name} failed (exit {proc.returncode}): {tail}"}


def part_throughput(opts, results: dict) -> None:
    rows = results.setdefault("throughput", [])
    for n in opts.sizes:
        path = synthetic_path(opts.data_dir, n)
        if not path.exists():
            print(f"writing {path} ...", flush=True)
            gen = run_worker("generate", {"path": str(path), "n_cells": n, "n_genes": 2000})
            print(f"  {gen}", flush=True)
            results.setdefault("generate", {})[str(n)] = gen
        for mode in opts.modes:
            for b in opts.batch_sizes:
                args = {"path": str(path), "mode": mode, "batch_size": b, "threads": opts.threads}
                r = run_worker("epoch", args) | {"mode": mode, "batch_size": b, "size": n}
                _put(rows, r, ("size", "mode", "batch_size"))
                print(f"  epoch {n} {mode} batch {b}: {_short(r)}", flush=True)
                save(opts, results)


def part_compare(opts, results: dict) -> None:
    rows = results.setdefault("compare", [])
    default_batch = int(config()["defaults"].get("batch_size", 128))
    runs = [(tool, False, 128) for tool in ("scvae", "scvae_traced", "torch", "scvi")]
    if default_batch != 128:  # Pyro's overhead at scvae's default batch size too
        runs += [(tool, False, default_batch) for tool in ("scvae", "scvae_traced", "torch")]
    runs += [("scvae", True, None), ("scvi", True, None)]
    for seed in opts.seeds:
        for tool, defaults, batch in runs:
            key = ("tool", "defaults", "batch_size", "seed")
            if tool == "scvi" and not opts.bench_python:
                r = {"tool": tool, "defaults": defaults, "seed": seed, "error": "no scvi env"}
                _put(rows, r | {"batch_size": batch}, key)
                continue
            args = {
                "tool": tool,
                "defaults": defaults,
                "epochs": opts.epochs,
                "seed": seed,
                "threads": opts.threads,
                "batch_size": batch,
            }
            python = opts.bench_python if tool == "scvi" else sys.executable
            r = run_worker("fit", args, python=python) | {"defaults": defaults, "seed": seed}
            r.setdefault("tool", tool)
            r.setdefault("batch_size", batch)
            _put(rows, r, key)
            print(
                f"  {tool} defaults={defaults} batch {batch} seed {seed}: {_short(r)}", flush=True
            )
            save(opts, results)


def part_batch(opts, results: dict) -> None:
    rows = results.setdefault("batch", [])
    for seed in opts.seeds:
        for b in (128, 256, 512, 1024):
            args = {
                "tool": "scvae",
                "defaults": True,
                "batch_size": b,
                "seed": seed,
                "threads": opts.threads,
            }
            r = run_worker("fit", args) | {"seed": seed}
            _put(rows, r, ("batch_size", "seed"))
            print(f"  recommended batch {b} seed {seed}: {_short(r)}", flush=True)
            save(opts, results)


def part_loader(opts, results: dict) -> None:
    rows = results.setdefault("loader", [])
    for n in opts.sizes:
        path = synthetic_path(opts.data_dir, n)
        if not path.exists():
            run_worker("generate", {"path": str(path), "n_cells": n, "n_genes": 2000})
        args = {"path": str(path), "n_cells": n, "batch_size": 128, "n_batches": 500}
        r = run_worker("loader", args)
        _put(rows, r, ("n_cells",))
        print(f"  loader {n}: {r}", flush=True)
        save(opts, results)


def part_preprocess(opts, results: dict) -> None:
    rows = results.setdefault("preprocess", [])
    for n in opts.sizes:
        path = synthetic_path(opts.data_dir, n)
        if not path.exists():
            run_worker("generate", {"path": str(path), "n_cells": n, "n_genes": 2000})
        # In memory only up to 10^5 cells: at 10^6 it needs several times the matrix.
        for mode in ("streamed", "memory") if n <= 100_000 else ("streamed",):
            args = {"path": str(path), "mode": mode, "n_top_genes": 1000, "out": str(opts.data_dir)}
            r = run_worker("preprocess", args) | {"n_cells": n, "mode": mode}
            _put(rows, r, ("n_cells", "mode"))
            print(f"  preprocess {n} {mode}: {_short(r)}", flush=True)
            save(opts, results)


def part_diagnostics(opts, results: dict) -> None:
    n = 100_000
    path = synthetic_path(opts.data_dir, n)
    if not path.exists():
        run_worker("generate", {"path": str(path), "n_cells": n, "n_genes": 2000})
    r = run_worker("diagnostics", {"path": str(path), "threads": opts.threads})
    results["diagnostics"] = r
    print(f"  diagnose 100k: {_short(r)}", flush=True)
    save(opts, results)


def _put(rows: list, row: dict, keys: tuple) -> None:
    """Add ``row``, replacing an earlier one with the same ``keys`` (a rerun)."""
    rows[:] = [r for r in rows if any(r.get(k) != row.get(k) for k in keys)]
    rows.append(row)


def _short(r: dict) -> str:
    if "error" in r:
        return r["error"][-400:]
    keys = ("cells_per_s", "epoch_seconds", "seconds", "epochs", "ari", "peak_rss_mb", "csr_mb")
    return ", ".join(f"{k}={r[k]:.4g}" for k in keys if isinstance(r.get(k), int | float))


def save(opts, results: dict) -> None:
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(results, indent=1, default=str) + "\n")


# ------------------------------------------------------------------------- tables


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def tables(results: dict) -> str:
    out = []
    rows = [r for r in results.get("throughput", []) if "error" not in r]
    if rows:
        out += [
            "| cells | counts | batch | cells/s | s/epoch | s per 1k cells | peak RSS MB | "
            "CSR MB | RSS/CSR |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['size']:,} | {r['mode']} | {r['batch_size']} | {r['cells_per_s']:,.0f} | "
                f"{r['epoch_seconds']:.1f} | {1000 * r['epoch_seconds'] / r['n_cells']:.3f} | "
                f"{r['peak_rss_mb']:,.0f} | {r['csr_mb']:,.0f} | "
                f"{r['peak_rss_mb'] / r['csr_mb']:.2f} |"
            )
        out.append("")
    for part, title in (("compare", "PBMC 4k"), ("batch", "recommended, batch sizes")):
        rows = [r for r in results.get(part, []) if "error" not in r]
        if not rows:
            continue
        groups: dict = {}
        for r in rows:
            key = (r["tool"], r.get("defaults", True), r.get("batch_size"))
            groups.setdefault(key, []).append(r)
        out += [
            f"{title}:",
            "",
            "| run | settings | batch | seeds | epochs | s (epochs) | s (wall) | cells/s "
            "| cells/s (wall) | KMeans ARI | NMI |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (tool, defaults, batch), rs in groups.items():
            setting = "own defaults" if defaults else "matched"
            aris = [r["ari"] for r in rs]
            spread = f" (sd {_sd(aris):.3f})" if len(aris) > 1 else ""
            epochs = _mean([r["epochs"] for r in rs])
            out.append(
                f"| {tool} | {setting} | {batch} | {len(rs)} | {epochs:.0f} "
                f"| {_mean([r['seconds'] for r in rs]):.1f} | "
                f"{_mean([r.get('wall_seconds') for r in rs]):.1f} | "
                f"{_mean([r['cells_per_s'] for r in rs]):,.0f} | "
                f"{_mean([r['n_train'] * r['epochs'] / r['wall_seconds'] for r in rs]):,.0f} | "
                f"{_mean(aris):.3f}{spread} | "
                f"{_mean([r['nmi'] for r in rs]):.3f} |"
            )
        out.append("")
    rows = [r for r in results.get("loader", []) if "error" not in r]
    if rows:
        out += [
            "Reading batches of 128 (no training), ms per batch:",
            "",
            "| cells | in memory | on disk, block shuffle | on disk, per-row shuffle |",
            "|---:|---:|---:|---:|",
        ]
        for r in rows:
            ms = [r[k]["ms_per_batch"] for k in ("memory", "backed_block", "backed_rows")]
            out.append(f"| {r['n_cells']:,} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} |")
        out.append("")
    rows = [r for r in results.get("preprocess", []) if "error" not in r]
    if rows:
        out += [
            "Preprocessing (QC, filters, 1,000 HVG of 2,000 by seurat_v3, write):",
            "",
            "| cells | path | s | peak RSS MB | CSR MB | RSS/CSR |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['n_cells']:,} | {r['mode']} | {r['seconds']:.1f} | "
                f"{r['peak_rss_mb']:,.0f} | {r['csr_mb']:,.0f} | "
                f"{r['peak_rss_mb'] / r['csr_mb']:.2f} |"
            )
        out.append("")
    d = results.get("diagnostics")
    if d and "error" not in d:
        parts = ", ".join(f"{k.strip('_')} {v:.1f} s" for k, v in d["parts"].items())
        out.append(
            f"diagnose() on {d['n_cells']:,} cells ({d['n_validation']:,} validation): "
            f"{d['seconds']:.1f} s ({parts}); peak RSS {d['peak_rss_mb']:,.0f} MB"
        )
    return "\n".join(out)


def _sd(values):
    m = _mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["throughput", "loader", "preprocess", "compare", "batch", "diagnostics"],
        choices=["throughput", "loader", "preprocess", "compare", "batch", "diagnostics"],
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--modes", nargs="+", default=["memory", "backed"])
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the matched comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/scvae-bench"))
    default_bench = ROOT / ".venv-bench" / "bin" / "python"
    parser.add_argument(
        "--bench-python",
        default=str(default_bench) if default_bench.exists() else "",
        help="Python of the environment with scvi-tools (default .venv-bench)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--tables", type=Path, help="only print the tables of a results JSON")
    opts = parser.parse_args()

    if opts.worker:
        result = WORKERS[opts.worker](json.loads(opts.worker_args))
        print("RESULT " + json.dumps(result, default=float))
        return
    if opts.tables:
        print(tables(json.loads(opts.tables.read_text())))
        return
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    opts.out = opts.out or opts.data_dir / "bench_scale_results.json"
    results = json.loads(opts.out.read_text()) if opts.out.exists() else {}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    results["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": opts.threads,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg_start": load(),
    }
    print(f"{results['machine']}", flush=True)
    for part in opts.parts:
        print(f"== {part}", flush=True)
        globals()[f"part_{part}"](opts, results)
    results["machine"]["load_avg_end"] = load()
    save(opts, results)
    print(tables(results))


if __name__ == "__main__":
    main()
