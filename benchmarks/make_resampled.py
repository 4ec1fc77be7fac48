"""Make large labelled datasets from a real file: its cells binomially thinned to random depths.

Usage (from the repository root)::

    python benchmarks/make_resampled.py --source ../shared/data/pbmc4k_top2000.h5 \\
        --n-cells 10000 100000 1000000 --out /tmp/scvae-bench/pbmc_resampled_{n_cells}.h5ad
    python benchmarks/make_resampled.py \\
        --source ../shared/data/kang_ifnb_2conditions_counts.h5ad \\
        --label-key cell_type --batch-key condition \\
        --n-cells 1000000 --out /tmp/scvae-bench/kang_resampled_{n_cells}.h5ad

Each new cell is a real cell's counts with every molecule kept with a probability drawn
log-uniformly in ``--depth`` (default 0.5 to 1), so labels, batches and the gene-gene
structure are the source's (:func:`scvae.data.synthetic.resample_cells`). The source is
read as the workflow reads it (:func:`scvae.read_dataset`: labels in ``obs["label"]``,
batches in ``obs["batch"]``); a source with more than ``--n-top-genes`` genes is first cut
to its most variable genes with the workflow's preprocessing
(:func:`scvae.preprocess.memory.preprocess`: its default filters, then seurat_v3 within
batches). Files are written block by block (:func:`scvae.data.synthetic.write_resampled`);
memory does not grow with ``--n-cells`` beyond ~12 bytes per cell plus obs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scvae.data.batches import BATCH_KEY, read_dataset  # noqa: E402
from scvae.data.synthetic import DEPTH_FRACTION, write_resampled  # noqa: E402
from scvae.preprocess.memory import preprocess  # noqa: E402

PLACEHOLDER = "{n_cells}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def output_paths(out: str, sizes: list[int]) -> list[Path]:
    """One output per size: ``out`` with ``{n_cells}`` replaced (required for several sizes)."""
    if PLACEHOLDER not in out:
        if len(sizes) > 1:
            raise SystemExit(
                f"--out {out!r}: with several --n-cells, put {PLACEHOLDER} in the file name "
                "so that each size gets its own file."
            )
        return [Path(out)]
    return [Path(out.replace(PLACEHOLDER, str(n))) for n in sizes]


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, read and cut the source once, write one file per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="labelled count file (any format)")
    parser.add_argument("--label-key", help="obs column of labels (X/Y .h5 files: none)")
    parser.add_argument("--batch-key", help="obs column of batches, copied to obs['batch']")
    parser.add_argument("--n-cells", type=int, nargs="+", required=True, help="sizes to make")
    parser.add_argument("--out", required=True, help=f"output .h5ad; {PLACEHOLDER} -> size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--depth",
        type=float,
        nargs=2,
        default=DEPTH_FRACTION,
        metavar=("LOW", "HIGH"),
        help="range of the thinning fraction (log-uniform, 0 < LOW <= HIGH <= 1)",
    )
    parser.add_argument(
        "--n-top-genes",
        type=int,
        default=2000,
        help="cut a source with more genes to this many highly variable ones (0: keep all)",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.n_cells):
        parser.error(f"--n-cells must be positive; got {args.n_cells}")
    paths = output_paths(args.out, args.n_cells)

    t0 = time.perf_counter()
    adata = read_dataset(args.source, label_key=args.label_key, batch_key=args.batch_key)
    if 0 < args.n_top_genes < adata.n_vars:
        preprocess(
            adata,
            n_top_genes=args.n_top_genes,
            batch_key=BATCH_KEY if args.batch_key else None,
        )
    print(
        f"source {args.source}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, "
        f"obs columns {list(adata.obs.columns)} ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    for n_cells, path in zip(args.n_cells, paths, strict=True):
        t0 = time.perf_counter()
        write_resampled(adata, path, n_cells, depth=tuple(args.depth), rng=args.seed, progress=True)
        seconds = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(
            f"{path}: {n_cells:,} cells in {seconds:.1f} s, {size_mb:,.0f} MB; "
            f"peak RSS so far {peak_rss_mb():,.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
