"""The runs the workflow makes of each dataset: baseline run names and which baselines it gets.

The workflow parses its config with these (so the Snakefile loads no scanpy), and
:mod:`scvae.baseline` computes the runs. A baseline run is a folder name under
``results/{dataset}/``:

- ``pca<N>``: PCA with ``N`` components of the log-normalized counts (unintegrated);
- ``harmony``: Harmony on that PCA with the batch (and covariates) as the variables;
  only for datasets with batches;
- ``scvi``: scvi-tools' ``SCVI`` with its own defaults (and the batch key when the data
  have batches);
- ``scvi_e<N>``: the same with ``max_epochs=N``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BASELINE_METHODS",
    "BASELINE_PATTERN",
    "HARMONY_N_COMPONENTS",
    "BaselineSpec",
    "baseline_arguments",
    "baseline_minutes",
    "baseline_name",
    "dataset_baselines",
    "dataset_has_batches",
    "parse_baseline_name",
    "scvi_default_epochs",
]

BASELINE_METHODS = ("pca", "harmony", "scvi")

#: Every baseline run name (a regular expression without anchors, for
#: ``wildcard_constraints`` and the reserved variant names).
BASELINE_PATTERN = r"pca\d+|harmony|scvi(?:_e\d+)?"

#: Principal components Harmony corrects: the usual 50 of Harmony's and Seurat's
#: tutorials; also the default of the config's ``baselines.harmony_pcs``
#: (:data:`scvae.config.WORKFLOW_DEFAULTS`).
HARMONY_N_COMPONENTS = 50


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline run: its method and the settings its name carries.

    Attributes
    ----------
    method
        One of :data:`BASELINE_METHODS`.
    n_components
        PCA components (``pca<N>``); None where the name carries none.
    max_epochs
        scVI epochs (``scvi_e<N>``); None for scvi-tools' own rule.
    """

    method: str
    n_components: int | None = None
    max_epochs: int | None = None

    @property
    def name(self) -> str:
        """The run name, e.g. ``"pca50"``, ``"harmony"``, ``"scvi_e25"``."""
        return baseline_name(self.method, self.n_components, self.max_epochs)


def baseline_name(
    method: str, n_components: int | None = None, max_epochs: int | None = None
) -> str:
    """Run name of a baseline, the inverse of :func:`parse_baseline_name`.

    Parameters
    ----------
    method
        One of :data:`BASELINE_METHODS`.
    n_components
        PCA components; required for ``"pca"`` and ignored otherwise (Harmony's PCA
        size and scVI's latent size are settings of the run, not part of its name).
    max_epochs
        scVI only: the epochs of a ``scvi_e<N>`` run (None: ``"scvi"``).

    Returns
    -------
    str
        ``pca<N>``, ``harmony``, ``scvi`` or ``scvi_e<N>``.
    """
    if method == "pca":
        if n_components is None:
            raise ValueError("a pca baseline needs n_components")
        return f"pca{int(n_components)}"
    if method == "harmony":
        return "harmony"
    if method == "scvi":
        return "scvi" if max_epochs is None else f"scvi_e{int(max_epochs)}"
    raise ValueError(f"unknown baseline method {method!r}; choose one of {BASELINE_METHODS}")


def parse_baseline_name(name: str) -> BaselineSpec | None:
    """The baseline a run name stands for; None for a model variant's name.

    Parameters
    ----------
    name
        A run name such as ``"pca50"``, ``"harmony"``, ``"scvi_e25"`` or ``"vanilla"``.

    Returns
    -------
    BaselineSpec or None
        The method and the settings in the name.
    """
    if not re.fullmatch(BASELINE_PATTERN, name):
        return None
    if name.startswith("pca"):
        return BaselineSpec("pca", n_components=int(name[3:]))
    if name == "harmony":
        return BaselineSpec("harmony")
    epochs = name.removeprefix("scvi").removeprefix("_e")
    return BaselineSpec("scvi", max_epochs=int(epochs) if epochs else None)


def dataset_has_batches(dataset: Mapping) -> bool:
    """Whether a dataset's config entry gives it batches (``batch_key`` or ``samples``).

    Parameters
    ----------
    dataset
        One entry of the workflow config's ``datasets``.

    Returns
    -------
    bool
        True when the preprocessed data will hold ``obs["batch"]``.
    """
    return bool(dataset.get("batch_key") or dataset.get("samples"))


def dataset_baselines(
    baselines: Mapping, *, has_batches: bool, scvi_available: bool = True
) -> list[str]:
    """Baseline run names of one dataset, from the workflow config's ``baselines``.

    Parameters
    ----------
    baselines
        The ``baselines`` section with its defaults filled in
        (:func:`scvae.config.config_with_defaults`): ``pca`` (components),
        ``harmony`` and ``scvi`` (booleans), ``scvi_epochs`` (list of epochs).
    has_batches
        Whether the dataset has batches (:func:`dataset_has_batches`); Harmony runs only
        then, since it has nothing to correct otherwise.
    scvi_available
        Whether scvi-tools is installed; without it no scVI run is listed (the
        comparison says why instead).

    Returns
    -------
    list of str
        Run names in the order ``pca<N>...``, ``harmony``, ``scvi``, ``scvi_e<N>...``,
        without repeats.
    """
    names = [baseline_name("pca", n) for n in baselines["pca"]]
    if has_batches and baselines["harmony"]:
        names.append("harmony")
    if scvi_available:
        if baselines["scvi"]:
            names.append("scvi")
        names += [baseline_name("scvi", max_epochs=n) for n in baselines["scvi_epochs"]]
    return list(dict.fromkeys(names))


def baseline_arguments(name: str, baselines: Mapping) -> list[str]:
    """Options of ``scvae baseline`` for one run, from its name and the config.

    Parameters
    ----------
    name
        A baseline run name (:data:`BASELINE_PATTERN`).
    baselines
        The workflow config's ``baselines`` section, defaults filled in:
        ``pca_target_sum`` (PCA and Harmony) and ``harmony_pcs`` (Harmony) are read.

    Returns
    -------
    list of str
        ``--method ...`` and the options of that method (scVI gets none but its epochs:
        scvi-tools' defaults apply).

    Raises
    ------
    ValueError
        When ``name`` is not a baseline run name.
    """
    spec = parse_baseline_name(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a baseline run name ({BASELINE_PATTERN})")
    args = ["--method", spec.method]
    if spec.method == "pca":
        args += ["--n-components", str(spec.n_components)]
    elif spec.method == "harmony":
        args += ["--n-components", str(baselines["harmony_pcs"])]
    if spec.method in ("pca", "harmony"):
        args += ["--target-sum", str(baselines["pca_target_sum"])]
    if spec.max_epochs is not None:
        args += ["--max-epochs", str(spec.max_epochs)]
    return args


def scvi_default_epochs(n_cells: int) -> int:
    """scvi-tools' default ``max_epochs``: ``min(400, round(20000 / n_cells * 400))``.

    A copy of ``scvi.model._utils.get_max_epochs_heuristic`` (scvi-tools 1.4), so that
    job run times can be estimated without importing scvi-tools.
    """
    return max(1, min(400, round(20_000 / max(n_cells, 1) * 400)))


def baseline_minutes(
    name: str, n_cells: int, n_genes: int, *, input_mb: float, threads: int = 1
) -> int:
    """Run time estimate (minutes) of a baseline job, for cluster schedulers.

    PCA and Harmony: 15 minutes plus 30 per GB of input (their measured cost is
    seconds at 10^4 cells). scVI adds its training: its epochs times 8e-9 s per cell x
    gene x hidden unit (128), over the square root of the threads, the estimate of
    the VAE's training jobs; scVI with batches on CellBench (1,408 cells x 2,000 genes,
    400 epochs) took 459 s on one busy core against 1,153 s estimated.

    Parameters
    ----------
    name
        Baseline run name.
    n_cells, n_genes
        Size of the preprocessed data.
    input_mb
        Size of the input file in MB.
    threads
        Threads of the job.

    Returns
    -------
    int
        Minutes (one attempt; the workflow multiplies by the attempt).
    """
    minutes = 15 + 30 * input_mb / 1024
    spec = parse_baseline_name(name)
    if spec is not None and spec.method == "scvi":
        epochs = spec.max_epochs or scvi_default_epochs(n_cells)
        minutes += 8e-9 * epochs * n_cells * n_genes * 128 / max(threads, 1) ** 0.5 / 60
    return int(minutes)
