"""The ``decode`` stage: a VAE run's file in; one h5ad with its decoded expression out."""

from __future__ import annotations

import os

from scvae.data.h5ad import write_h5ad
from scvae.decode import read_run


def run_decode(
    input_h5ad: str | os.PathLike,
    output_h5ad: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    transform_batch: str | None = None,
    batch_size: int | None = None,
) -> None:
    """Write a run with its decoded expression as one self-contained h5ad (``scvae decode``).

    Parameters
    ----------
    input_h5ad
        A VAE run's ``final.h5ad`` or ``latent.h5ad``.
    output_h5ad
        The h5ad to write (atomically): what ``scvae export`` writes (counts, embedding,
        clusters, ``uns``) plus ``layers["scvae_normalized"]``.
    model, transform_batch, batch_size
        As in :func:`scvae.decode.read_run`: the model (default: ``model.pt`` next to
        ``input_h5ad``), the batch every cell is decoded as, the cells decoded at once.

    Raises
    ------
    InputError
        When a file of the run is missing or corrupt, there is no model to decode with (a
        baseline run) or it does not fit the cells.
    """
    adata = read_run(
        input_h5ad,
        decoded=True,
        model=model,
        transform_batch=transform_batch,
        batch_size=batch_size,
    )
    write_h5ad(adata, output_h5ad)
