"""Encode cells: posterior means and scales of q(z | x), in evaluation mode.

:func:`encode` is the one encoding loop of the package: :meth:`scvae.model.SCVAE.get_latent`,
the diagnostics (:func:`scvae.diagnostics.suite.diagnose`) and the aggressive phase of
training (its held-out mutual information, :mod:`scvae.training.aggressive`) read their
codes through it. :func:`module_device` and :func:`eval_mode` are the small helpers every
evaluation pass needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from scvae.data.loaders import CountBatches

if TYPE_CHECKING:
    from scvae.module.vae import VAE

__all__ = ["encode", "eval_mode", "module_device"]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters.

    Parameters
    ----------
    module
        A module with at least one parameter.

    Returns
    -------
    torch.device
        Where its first parameter lives.
    """
    return next(module.parameters()).device


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put a module in eval mode (BatchNorm running stats, no dropout), then restore.

    Parameters
    ----------
    module
        The module; its training flag is restored on exit, also after an error.

    Yields
    ------
    torch.nn.Module
        The module, in eval mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def encode(
    module: VAE,
    X: sp.csr_matrix,
    batch_size: int,
    rows: np.ndarray | None = None,
    covariates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and scales (float64) of ``rows`` of ``X``, in evaluation mode.

    Parameters
    ----------
    module
        The VAE.
    X
        Counts (cells x genes) over the module's genes: a CSR matrix or counts on disk
        (:class:`scvae.data.ondisk.H5CSR`).
    batch_size
        Cells encoded at once.
    rows
        Rows of ``X`` to encode, in increasing order (None: all rows). The results come
        in this order; unsorted rows come back sorted within each batch of
        :class:`scvae.data.loaders.CountBatches`.
    covariates
        Covariate codes of every row of ``X`` (cells x covariates), for a conditional
        model; None for an unconditional one.

    Returns
    -------
    tuple
        ``(loc, scale)``, each of shape (len(rows), n_latent), float64.
    """
    device = module_device(module)
    dtype = next(module.parameters()).dtype
    rows = np.arange(X.shape[0]) if rows is None else rows
    # Filled in place: arrays appended per batch would pin the heap between the batches'
    # temporaries (glibc), and memory would grow with the cells (diagnostics/iwae.py).
    loc = np.empty((len(rows), module.n_latent))
    scale = np.empty_like(loc)
    start = 0
    with eval_mode(module):
        loader = CountBatches(X, rows, batch_size, covariates=covariates)
        for x, c in loader.epoch(0, device):
            qz = module.inference(x.to(dtype), c)["qz"]
            stop = start + x.shape[0]
            loc[start:stop] = qz.loc.double().cpu().numpy()
            scale[start:stop] = qz.scale.double().cpu().numpy()
            start = stop
    return loc, scale
