"""The decoded expression of a VAE run, computed on demand from the run's model.

The decoded expression (:meth:`scvae.model.SCVAE.get_normalized_expression`) is a
dense float32 matrix of cells x genes: on PBMC 4k it made each VAE ``final.h5ad`` 4.5
times the size of the preprocessed counts it refers to. The workflow therefore does not
store it unless asked (``cluster: decoded: true``); this module computes it when it is
wanted, from the ``model.pt`` next to the run file:

- :func:`read_run`: :func:`scvae.data.runfiles.read_run` (everything attached: counts,
  embedding, clusters) plus, with ``decoded=True``, ``layers["scvae_normalized"]``;
  this is ``scvae.read_run``;
- :func:`add_decoded`: that layer for an AnnData already in memory;

and :func:`scvae.stages.decode.run_decode` writes it file to file (``scvae decode``).

It sits above :mod:`scvae.model` and :mod:`scvae.data.runfiles` (the data layer cannot
load a model), and imports torch only when it decodes, so ``scvae.read_run`` stays
light.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from scvae.data.runfiles import read_run as read_run_files
from scvae.errors import InputError

if TYPE_CHECKING:
    import anndata

    from scvae.model import SCVAE

__all__ = [
    "DECODED_LAYER",
    "LIBRARY_SIZE",
    "MODEL_FILE",
    "add_decoded",
    "model_of_run",
    "read_run",
]

logger = logging.getLogger(__name__)

DECODED_LAYER = "scvae_normalized"
"""Layer with the decoded expression."""

LIBRARY_SIZE = 1e4
"""Counts per cell of :data:`DECODED_LAYER` (the scale of ``normalize_total``)."""

MODEL_FILE = "model.pt"
"""Name of a run's model file, in the run's folder next to ``latent.h5ad`` and ``final.h5ad``."""


def model_of_run(path: str | os.PathLike) -> Path:
    """The ``model.pt`` of the run that wrote ``path``: the file next to it.

    Parameters
    ----------
    path
        A run file (``final.h5ad`` or ``latent.h5ad`` of ``results/<dataset>/<run>/seed<k>/``).

    Returns
    -------
    pathlib.Path
        The model file.

    Raises
    ------
    InputError
        When there is none (a baseline run has no decoder; a copied run file may have
        left its model behind: give the model's path).
    """
    model = Path(path).parent / MODEL_FILE
    if not model.is_file():
        raise InputError(
            f"{path}: no {MODEL_FILE} next to it ({model}), so no decoder to compute the "
            "decoded expression with. Baselines (pca, harmony, scvi) have none; for a VAE "
            "run whose model is elsewhere, give its path (model=... or --model)."
        )
    return model


def add_decoded(
    adata: anndata.AnnData,
    model: SCVAE | str | os.PathLike,
    *,
    transform_batch: str | None = None,
    batch_size: int | None = None,
) -> None:
    """Put the decoded expression of ``adata``'s cells in ``layers["scvae_normalized"]``.

    The decoder's mean proportions at each cell's posterior mean
    (:meth:`scvae.model.SCVAE.get_normalized_expression`) times :data:`LIBRARY_SIZE`:
    denoised expression per 10,000 counts, comparable to ``normalize_total``'s. Dense
    float32: 4 bytes per cell and gene (8 GB for 10^6 cells x 2,000 genes).

    Parameters
    ----------
    adata
        Cells with their raw counts in ``layers["counts"]`` (or ``X`` without that
        layer) over the model's genes, and the covariate columns of a conditional model;
        what :func:`read_run` returns.
    model
        A trained model, or the path of its ``model.pt`` (loaded with
        :meth:`scvae.model.SCVAE.load`, which runs no code from the file).
    transform_batch
        For a model conditioned on batches: decode every cell as if it came from this
        batch (a batch-corrected expression); None decodes each cell with its own.
    batch_size
        Cells decoded at once; None: the default of ``get_normalized_expression``.

    Returns
    -------
    None
        Adds ``adata.layers["scvae_normalized"]`` and ``adata.uns["scvae"]["decoded"]``
        (``layer``, ``library_size``, ``transform_batch``, empty for each cell's own
        batch, and ``model``, the file, empty for a model given in memory).

    Raises
    ------
    InputError
        When the model file cannot be loaded, or the cells lack the model's genes or
        covariate columns, or ``transform_batch`` is not one of the model's batches.
    """
    # On use: the model loads torch and Pyro, which read_run and the cluster stage need
    # only with decoded=True.
    from scvae.model import SCVAE

    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size={batch_size}: decode at least 1 cell at a time")
    source = ""
    if not isinstance(model, SCVAE):
        source = str(model)
        model = SCVAE.load(model)
    options = {} if batch_size is None else {"batch_size": batch_size}
    adata.layers[DECODED_LAYER] = model.get_normalized_expression(
        adata, library_size=LIBRARY_SIZE, transform_batch=transform_batch, **options
    )
    adata.uns.setdefault("scvae", {})["decoded"] = {
        "layer": DECODED_LAYER,
        "library_size": LIBRARY_SIZE,
        "transform_batch": "" if transform_batch is None else str(transform_batch),
        "model": source,
    }
    logger.info(
        "decoded expression in layers[%r]: %d cells x %d genes, %.0f MB (per %g counts)",
        DECODED_LAYER,
        adata.n_obs,
        adata.n_vars,
        adata.n_obs * adata.n_vars * 4 / 1e6,
        LIBRARY_SIZE,
    )


def read_run(
    path: str | os.PathLike,
    *,
    decoded: bool = False,
    model: str | os.PathLike | None = None,
    transform_batch: str | None = None,
    batch_size: int | None = None,
    backed: bool | None = None,
) -> anndata.AnnData:
    """Open a run file with everything attached and, if asked, its decoded expression.

    :func:`scvae.data.runfiles.read_run` (the counts, the embedding, the clusters, the
    scores) plus, with ``decoded=True``, ``layers["scvae_normalized"]`` computed from
    the run's model (:func:`add_decoded`), unless the file already holds that layer
    (a run with ``cluster: decoded: true``).

    Parameters
    ----------
    path
        A run file (``final.h5ad`` or ``latent.h5ad`` of ``results/<dataset>/<run>/
        seed<k>/``), or any h5ad.
    decoded
        Add the decoded expression.
    model
        The model to decode with; None: the run's own, ``model.pt`` next to ``path``.
    transform_batch, batch_size
        As in :func:`add_decoded`.
    backed
        As in :func:`scvae.data.runfiles.read_run`: None leaves the counts on disk when the
        preprocessed file is at least 1 GiB.

    Returns
    -------
    anndata.AnnData
        Everything, ready for scanpy (``sc.pl.umap(adata, color="scvae_leiden")``;
        ``sc.pl.umap(adata, color="CD3E", layer="scvae_normalized")`` with
        ``decoded=True``).

    Raises
    ------
    InputError
        When a file of the run is missing or corrupt, or (``decoded=True``) there is no
        model to decode with (a baseline run) or it does not fit the cells.
    """
    adata = read_run_files(path, backed=backed)
    if not decoded:
        return adata
    stored = adata.uns.get("scvae", {}).get("decoded", {})
    same_batch = str(stored.get("transform_batch", "")) == (transform_batch or "")
    if DECODED_LAYER in adata.layers and model is None and same_batch:
        return adata
    add_decoded(
        adata,
        model_of_run(path) if model is None else model,
        transform_batch=transform_batch,
        batch_size=batch_size,
    )
    return adata
