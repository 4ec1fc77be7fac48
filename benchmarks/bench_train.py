"""Train a configured variant on a real dataset; print speed, memory and clustering quality.

Usage (from the repository root)::

    python benchmarks/bench_train.py        # recommended, PBMC 4k, seed 0
    python benchmarks/bench_train.py --variant vanilla \\
        --data ../shared/data/mouse_bladder_top2000.h5
    python benchmarks/bench_train.py --seeds 0 1 2 --threads 2

The settings are the workflow's (``--config``, by default ``config/config.yaml``: its
``defaults``, then the variant: a preset of ``scvae.presets`` or the config's own), the
data are preprocessed with the workflow's filters, and the score is KMeans ARI/NMI on the
posterior means (k = number of labels; mean over 5 KMeans fits, see
``scvae.metrics.kmeans_ari_nmi``) — the same numbers the workflow's comparison reports.
The config's PCA baselines (``baselines: pca``, ``pca_embedding``) are scored the same
way on the same cells, so one run gives the comparison side by side.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scvae  # noqa: E402
from scvae.baseline import parse_target_sum, pca_embedding  # noqa: E402
from scvae.config import config_with_defaults, preprocess_settings, resolve_variant  # noqa: E402
from scvae.data.readers import read_counts  # noqa: E402
from scvae.diagnostics.suite import diagnose  # noqa: E402
from scvae.metrics import kmeans_ari_nmi  # noqa: E402
from scvae.preprocess.memory import preprocess  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/pbmc4k_top2000.h5"))
    parser.add_argument("--config", default=str(ROOT / "config/config.yaml"))
    parser.add_argument("--variant", default="recommended")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=None, help="override max_epochs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # As the workflow reads it: every key left out at the package's default.
    config = config_with_defaults(yaml.safe_load(Path(args.config).read_text()))
    adata = read_counts(args.data)
    preprocess(adata, **preprocess_settings(config))
    labels = adata.obs["label"].to_numpy()
    print(f"data: {args.data}: {adata.n_obs} cells x {adata.n_vars} genes")
    print(f"variant: {args.variant}, threads: {args.threads}, torch {torch.__version__}")
    header = (
        "seed  epochs  s/epoch  cells/s  train_s  AU  MI     IWAE_LL   verdict   "
        "kmeans_ARI  kmeans_NMI"
    )
    print(header)
    aris = []
    for seed in args.seeds:
        settings = resolve_variant(config, args.variant, seed)
        settings["threads"] = args.threads
        if args.max_epochs:
            settings["max_epochs"] = args.max_epochs
        started = time.perf_counter()
        model = scvae.train(adata, progress=False, **settings)
        wall = time.perf_counter() - started
        z = model.get_latent(adata)
        scores = kmeans_ari_nmi(z, labels, rng=0)
        diag = diagnose(model, adata, k_iwae=100)
        epochs = model.summary["epochs"]
        per_epoch = model.summary["train_seconds"] / epochs
        rate = model.summary["n_train_cells"] / per_epoch
        aris.append(scores["ari"])
        print(
            f"{seed:<5d} {epochs:<7d} {per_epoch:<8.2f} {rate:<8.0f} {wall:<8.1f} "
            f"{diag['active_units']:<3d} {diag['mi']:<6.2f} {diag['iwae_ll_per_cell']:<9.1f} "
            f"{diag['verdict']:<9s} "
            f"{scores['ari']:<11.3f} {scores['nmi']:.3f}"
        )
    sd = np.std(aris, ddof=1) if len(aris) > 1 else 0.0
    print(f"KMeans ARI mean {np.mean(aris):.3f} (sd {sd:.3f})")
    target_sum = config["baselines"]["pca_target_sum"]
    for n_components in config["baselines"]["pca"]:
        emb = pca_embedding(
            adata,
            n_components=n_components,
            target_sum=parse_target_sum(target_sum),
        )
        pca = kmeans_ari_nmi(emb, labels, rng=0)
        print(
            f"PCA {n_components} ({target_sum} library): KMeans ARI {pca['ari']:.3f}, "
            f"NMI {pca['nmi']:.3f}; {args.variant} - PCA: {np.mean(aris) - pca['ari']:+.3f}"
        )
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
