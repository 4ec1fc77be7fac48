"""Memory and run time of the workflow's jobs, for schedulers; no heavy imports.

The rules' ``resources`` (``workflow/rules/common.smk``) call these with the size of a
job's input and the ``attempt``: ``mem_mb`` for ``sbatch --mem`` and ``--resources
mem_mb=...`` on one machine, ``runtime`` (minutes) for ``sbatch --time``.

Measured peaks (``/usr/bin/time``; 300, 4,271 and 42,710 cells x 2,000 genes): about 600
MB for Python and the libraries plus 1.5-2.5 times the input ``.h5ad`` (cluster: 5 times;
preprocess: 18 times its gzip-compressed input); training at 1.9e-9 s per cell x gene x
hidden unit and epoch on one core; cluster (kNN, Leiden, UMAP) at 4e-3 s per cell. With
the counts on disk (inputs of at least :func:`scvae.data.ondisk.backed_min_bytes`)
memory follows the cells, not the counts: at 10^6 cells x 2,000 genes (1.9 GB of counts)
preprocess, train, PCA and diagnose peaked at 1.1-1.5 GB and cluster at a few GB
(benchmarks/README.md, the whole workflow). The estimates leave 2-4 times headroom and
grow with each retry (``attempt``), so a job killed for memory or time comes back with
more.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import h5py

from scvae.data.ondisk import backed_min_bytes
from scvae.training.settings import default_settings

__all__ = [
    "SMALL_DATASET_MB",
    "cluster_minutes",
    "diagnose_minutes",
    "files_mb",
    "gpu_count",
    "h5ad_dims",
    "input_dims",
    "mem_mb",
    "postprocess_group",
    "reads_on_disk",
    "runtime_minutes",
    "train_minutes",
    "trainings_minutes",
]

#: Datasets whose input files add up to less than this (MB) are small: the
#: post-training jobs of each of their runs share one cluster job (``group:``).
SMALL_DATASET_MB = 200

# Minutes every job gets on top of its work: start-up, imports, reading and writing.
START_MINUTES = 15
# Seconds per cell x gene x hidden unit and epoch of training on one thread (measured
# 1.9e-9; 4 times that leaves room for slower cores and batch-aware models).
TRAIN_SECONDS = 8e-9
# Seconds per cell x importance sample x gene x hidden unit of the IWAE bound.
IWAE_SECONDS = 2e-10
# Seconds per cell of the kNN graph, Leiden and UMAP (measured 4e-3), and the share
# each further Leiden resolution adds.
CLUSTER_SECONDS = 1e-2
RESOLUTION_SHARE = 0.2
# Cells assumed where a job's are not known before its input is read.
UNKNOWN_CELLS = 10_000
# How much faster a training is on a GPU than on the job's CPU threads, at the least.
GPU_SPEEDUP = 5


def h5ad_dims(path: str | os.PathLike) -> tuple[int, int] | None:
    """(cells, genes) of an ``.h5ad``, read from its header.

    Parameters
    ----------
    path
        An ``.h5ad`` file; a run file (``latent.h5ad``, no ``X``) works as well, since
        the sizes come from the obs and var indexes.

    Returns
    -------
    tuple of int, or None
        None when the file does not exist yet (a dry run) or is not an ``.h5ad``.
    """
    try:
        with h5py.File(path, "r") as f:
            n = [len(f[k][f[k].attrs.get("_index", "_index")]) for k in ("obs", "var")]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return n[0], n[1]


def input_dims(path: str | os.PathLike, size_mb: float) -> tuple[int, int]:
    """(cells, genes) of an input: from its header, or estimated from its size.

    Parameters
    ----------
    path
        The input ``.h5ad``.
    size_mb
        Its size in MB (Snakemake's ``input.size_mb``), for the estimate made before
        the file exists: about 16 bytes per stored count, 10% of them non-zero, 2,000
        genes.

    Returns
    -------
    tuple of int
        Cells (at least 1,000 when estimated) and genes.
    """
    return h5ad_dims(path) or (max(1000, int(size_mb * 1e6 / 16 / 200)), 2000)


def reads_on_disk(paths: Iterable[str | os.PathLike]) -> bool:
    """Whether a job reads its counts backed (an input ``.h5ad`` that large).

    Backed from :func:`scvae.data.ondisk.backed_min_bytes` on.

    Parameters
    ----------
    paths
        The job's input files.

    Returns
    -------
    bool
        False as well when an input does not exist yet (a dry run).
    """
    try:
        return any(
            str(p).endswith(".h5ad") and Path(p).stat().st_size >= backed_min_bytes() for p in paths
        )
    except OSError:
        return False


def mem_mb(
    size_mb: float,
    *,
    factor: float,
    floor: float,
    attempt: int = 1,
    on_disk_factor: float | None = None,
    on_disk: bool = False,
) -> int:
    """Memory of a job in MB: ``floor`` plus ``factor`` times its input's size, per attempt.

    Parameters
    ----------
    size_mb
        Size of the job's input in MB.
    factor
        MB per MB of input with the counts in memory.
    floor
        MB for Python, the libraries and the outputs.
    attempt
        The try (1 first); the estimate grows in proportion.
    on_disk_factor
        MB per MB of input when the counts stay on disk (then memory follows the cells
        and the minibatches, not the counts); None: ``factor`` in any case.
    on_disk
        Whether the job reads its counts backed (:func:`reads_on_disk`).

    Returns
    -------
    int
        MB.
    """
    per_mb = on_disk_factor if on_disk and on_disk_factor is not None else factor
    return int((floor + per_mb * size_mb) * attempt)


def runtime_minutes(size_mb: float, *, minutes: float, per_gb: float, attempt: int = 1) -> int:
    """Run time of a job in minutes: ``minutes`` plus ``per_gb`` per GB of input, per attempt.

    Parameters
    ----------
    size_mb
        Size of the job's input in MB.
    minutes
        Minutes whatever the input.
    per_gb
        Minutes per GB (1,024 MB) of input.
    attempt
        The try (1 first).

    Returns
    -------
    int
        Minutes.
    """
    return int((minutes + per_gb * size_mb / 1024) * attempt)


def _width(settings: Mapping) -> int:
    """The widest hidden layer of encoder and decoder."""
    return max(settings["n_hidden"], settings["decoder_hidden"])


def train_minutes(
    settings: Mapping,
    cells: int,
    genes: int,
    *,
    threads: int = 1,
    gpu: bool = False,
    attempt: int = 1,
) -> int:
    """Minutes of a training for ``max_epochs`` (or ``max_cells``) over the cells, per attempt.

    No early stop is assumed: the estimate is the budget's upper bound.

    Parameters
    ----------
    settings
        The run's complete settings (:func:`scvae.config.resolve_variant`).
    cells, genes
        Size of the preprocessed data.
    threads
        Torch threads of the job; the time falls with their square root.
    gpu
        Whether the job trains on a GPU.
    attempt
        The try (1 first).

    Returns
    -------
    int
        Minutes.
    """
    width = _width(settings) * max(1, settings["n_layers"], settings["decoder_layers"])
    epochs = settings["max_epochs"]
    if settings.get("max_cells"):
        # A cap in cells seen ends training before max_epochs on large data.
        epochs = min(epochs, settings["max_cells"] / max(cells, 1))
    seconds = TRAIN_SECONDS * epochs * cells * genes * width / threads**0.5
    if gpu:
        seconds /= GPU_SPEEDUP
    return int((START_MINUTES + seconds / 60) * attempt)


def diagnose_minutes(
    settings: Mapping,
    cells: int,
    genes: int,
    *,
    k_iwae: int,
    threads: int = 1,
    attempt: int = 1,
) -> int:
    """Minutes of the collapse diagnostics: the IWAE bound dominates, per attempt.

    Parameters
    ----------
    settings
        The run's complete settings.
    cells, genes
        Size of the preprocessed data.
    k_iwae
        Importance samples per cell.
    threads
        Torch threads of the job.
    attempt
        The try (1 first).

    Returns
    -------
    int
        Minutes.
    """
    seconds = IWAE_SECONDS * cells * k_iwae * genes * _width(settings) / threads**0.5
    return int((START_MINUTES + seconds / 60) * attempt)


def cluster_minutes(cells: int, *, n_resolutions: int, attempt: int = 1) -> int:
    """Minutes of the kNN graph, Leiden at each resolution and UMAP, per attempt.

    Parameters
    ----------
    cells
        Cells of the run.
    n_resolutions
        Leiden resolutions.
    attempt
        The try (1 first).

    Returns
    -------
    int
        Minutes.
    """
    seconds = CLUSTER_SECONDS * cells * (1 + RESOLUTION_SHARE * n_resolutions)
    return int((START_MINUTES + seconds / 60) * attempt)


def trainings_minutes(settings: Sequence[Mapping], cells: int | None, *, attempt: int = 1) -> int:
    """Minutes of a job of short trainings (an atlas job), per attempt.

    About 2 s per epoch and thousand cells of each training (an aggressive epoch counts
    1.2 times), plus 10 minutes of start-up.

    Parameters
    ----------
    settings
        Each training's settings; what one leaves out is the package default.
    cells
        Cells each training sees; 0 or None (all the dataset's, not known before it is
        read) counts as :data:`UNKNOWN_CELLS`.
    attempt
        The try (1 first).

    Returns
    -------
    int
        Minutes.
    """
    cells = cells or UNKNOWN_CELLS
    seconds = 0.0
    for run in settings:
        s = {**default_settings(), **run}
        seconds += 2e-3 * s["max_epochs"] * cells * (1 + s["aggressive_epochs"] / 5)
    return int((10 + seconds / 60) * attempt)


def gpu_count(device: str) -> int | None:
    """GPUs a job on ``device`` requests: 1 for ``cuda``/``cuda:<n>``, else None.

    None rather than 0, so that jobs on the CPU carry no ``gpu`` resource at all (a
    scheduler then asks for no GPU partition).
    """
    return 1 if device.startswith("cuda") else None


def files_mb(paths: Iterable[str | os.PathLike]) -> float | None:
    """Size in MB of files and folders (every file below a folder, e.g. 10x output).

    Parameters
    ----------
    paths
        Files or folders.

    Returns
    -------
    float or None
        MB; None when one of them does not exist.
    """
    files: list[Path] = []
    try:
        for path in map(Path, paths):
            files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        return sum(p.stat().st_size for p in files) / 1e6
    except OSError:
        return None


def postprocess_group(paths: Iterable[str | os.PathLike]) -> str | None:
    """Job group of the diagnose, baseline and cluster jobs of a run on a small dataset.

    One cluster job then runs the post-training steps of a run instead of one job each
    (and ``group-components: postprocess=N`` of a profile packs N runs into one); the
    jobs of a large dataset each get their own resources. A local run ignores groups.

    Parameters
    ----------
    paths
        The dataset's input files or folders (every sample's, for several samples).

    Returns
    -------
    str or None
        ``"postprocess"`` below :data:`SMALL_DATASET_MB`; None above it or while an
        input is missing.
    """
    size = files_mb(paths)
    return "postprocess" if size is not None and size < SMALL_DATASET_MB else None
