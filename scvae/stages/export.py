"""The ``export`` stage: a run file in; one self-contained h5ad out."""

from __future__ import annotations

import os

from scvae.data.h5ad import write_h5ad
from scvae.data.runfiles import read_run


def run_export(input_h5ad: str | os.PathLike, output_h5ad: str | os.PathLike) -> None:
    """Write a run with everything attached as one h5ad (``scvae export``).

    Parameters
    ----------
    input_h5ad
        A run's ``final.h5ad`` or ``latent.h5ad`` (or any file of the chain).
    output_h5ad
        The h5ad to write (atomically): counts in ``X`` and ``layers["counts"]``, the
        embeddings, clusters and ``uns`` (:func:`scvae.data.runfiles.read_run`).

    Raises
    ------
    InputError
        When a file of the chain is missing, corrupt, or does not match the cells and
        genes of the file it extends.
    """
    write_h5ad(read_run(input_h5ad), output_h5ad)
