"""Time the collapse diagnostics on 10k cells x 2000 genes with a 10-dimensional code.

Cells are resampled from ../shared/data/pbmc4k_top2000.h5 with binomial thinning (each
count kept with probability 0.9), so no two cells are identical; without the file,
negative-binomial counts of the same size are simulated. A VAE is trained for one epoch
(the diagnostics' cost does not depend on how well it is trained), then each measure
is timed on the sizes :func:`scvae.diagnostics.suite.diagnose` uses, and ``diagnose`` itself.

Usage::

    python benchmarks/bench_diagnostics.py [--cells 10000] [--epochs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata
import h5py
import numpy as np
import scipy.sparse as sp
import torch

from scvae.diagnostics.iwae import iwae_log_likelihood
from scvae.diagnostics.jacobian import decoder_jacobian
from scvae.diagnostics.kl import active_units, kl_per_dim
from scvae.diagnostics.mi import mutual_information
from scvae.diagnostics.suite import diagnose
from scvae.model import train
from scvae.module.encoding import encode

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbmc4k_top2000.h5"


def make_counts(n_cells: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    if DATA.exists():
        with h5py.File(DATA) as f:
            X = np.asarray(f["X"][:], dtype=np.int64)
        X = rng.binomial(X[rng.integers(0, X.shape[0], n_cells)], 0.9)
        print(f"data: {n_cells} cells resampled and thinned from {DATA.name}")
    else:
        mu = rng.gamma(0.3, 1.0, size=(1, 2000)) * rng.lognormal(0, 0.5, size=(n_cells, 1))
        X = rng.negative_binomial(2.0, 2.0 / (2.0 + mu))
        print(f"data: {n_cells} cells of simulated NB counts ({DATA} is absent)")
    X = sp.csr_matrix(X.astype(np.float32))
    keep = np.asarray(X.sum(1)).ravel() > 0
    return X[keep]


def timed(label: str, fn, times: dict):
    started = time.perf_counter()
    out = fn()
    times[label] = time.perf_counter() - started
    print(f"  {label:<42s} {times[label]:7.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    X = make_counts(args.cells)
    adata = anndata.AnnData(X)
    adata.layers["counts"] = X.copy()
    started = time.perf_counter()
    model = train(
        adata,
        preset=None,
        n_latent=10,
        max_epochs=args.epochs,
        seed=0,
        device="cpu",
        progress=False,
    )
    print(f"train: {args.epochs} epoch(s) in {time.perf_counter() - started:.1f} s")

    module = model.module.eval()
    val = np.flatnonzero(model.split == "validation")
    times: dict[str, float] = {}
    print(
        f"measures ({X.shape[0]} cells, {len(val)} validation, K={args.k}, "
        f"{torch.get_num_threads()} threads):"
    )
    loc, scale = timed("encode all cells", lambda: encode(module, X, 256), times)
    timed(
        "kl_per_dim + active_units",
        lambda: (kl_per_dim(loc, scale), active_units(loc)),
        times,
    )
    mi = timed("mutual_information (all cells)", lambda: mutual_information(loc, scale), times)
    timed(
        "mutual_information (validation)",
        lambda: mutual_information(loc[val], scale[val]),
        times,
    )
    lib = np.asarray(X.sum(1)).ravel()
    timed(
        "decoder_jacobian (500 cells)",
        lambda: decoder_jacobian(module, loc, lib, n_cells=500),
        times,
    )
    iw = timed(
        f"iwae_log_likelihood (validation, K={args.k})",
        lambda: iwae_log_likelihood(module, X[val], k=args.k),
        times,
    )
    print(f"  sum of measures {sum(times.values()):.2f} s")
    d = timed("diagnose() end to end", lambda: diagnose(model, adata, k_iwae=args.k), times)
    print(
        f"MI {mi['mi']:.3f} nats (cap {mi['mi_cap']:.2f}), IWAE {iw['iwae_ll_per_cell']:.1f} "
        f"nats/cell, ELBO {iw['elbo']:.1f}; verdict: {d['verdict']}"
    )


if __name__ == "__main__":
    main()
