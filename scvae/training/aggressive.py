"""The aggressive phase: the inference network catches up before each decoder step.

He et al. (2019, "Lagging inference networks") train the encoder alone on fresh
minibatches until its loss stops improving, then take one step of the decoder, and
leave this phase once the mutual information ``I(x; z)`` of held-out cells stops
rising. See ``aggressive_epochs`` in :class:`~scvae.training.settings.TrainConfig`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from scvae.data.loaders import CountBatches
from scvae.module.aggregate import aggregate_mi
from scvae.module.encoding import encode
from scvae.module.vae import VAE
from scvae.training.checkpoint import TrainState
from scvae.training.objective import FreeBitsELBO
from scvae.training.settings import TrainConfig

log = logging.getLogger(__name__)

# Spaces the encoder's reshuffled epochs far apart from the training epochs' own shuffles.
_SEED_STRIDE = 1_000_003


def optimizer_step(
    loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, clip_norm: float
) -> None:
    """One optimizer step on ``params`` only (the others get no gradient and stay put).

    Parameters
    ----------
    loss
        The scalar loss.
    params
        The parameters to update; those that do not require a gradient are skipped.
    optimizer
        The optimizer holding every parameter of the module.
    clip_norm
        Gradient-norm clipping threshold over ``params`` (0 = off).
    """
    params = [p for p in params if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()


def encoder_batches(loader: CountBatches, epoch: int, device: torch.device) -> Iterator:
    """Endless minibatches for the encoder steps of ``epoch``: reshuffled epochs in a row.

    Seeded per epoch, apart from the training epochs' own shuffles, so that a resumed
    run draws the same batches.

    Parameters
    ----------
    loader
        The training cells' batches.
    epoch
        The training epoch (0-based).
    device
        Where the batches go.

    Yields
    ------
    tuple
        ``(x, codes)`` as :meth:`scvae.data.loaders.CountBatches.epoch` yields them.
    """
    shuffle = _SEED_STRIDE * (epoch + 1)
    while True:
        yield from loader.epoch(shuffle, device)
        shuffle += 1


def encoder_steps(
    module: VAE,
    elbo: FreeBitsELBO,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor | None]],
    weight: float,
    optimizer,
    cfg: TrainConfig,
) -> None:
    """Encoder-only steps on fresh minibatches until the loss stops improving.

    He et al. (2019) check convergence every few steps; here: stop when the mean loss
    of the last 5 steps is not below that of the 5 before, or after ``aggressive_steps``
    (or at a non-finite loss, which the decoder step that follows reports).

    Parameters
    ----------
    module
        The VAE; only its :meth:`~scvae.module.vae.VAE.inference_parameters` move.
    elbo
        The objective.
    batches
        Minibatches to draw from (:func:`encoder_batches`).
    weight
        The KL weight of the current step.
    optimizer
        The optimizer holding every parameter of the module.
    cfg
        Training settings (``aggressive_steps``, ``clip_norm``).
    """
    params = module.inference_parameters()
    losses: list[float] = []
    for _ in range(cfg.aggressive_steps):
        x, c = next(batches)
        loss = elbo.loss_from_terms(elbo.terms(module.model, module.guide, x, c, weight))
        if not torch.isfinite(loss):
            return
        optimizer_step(loss, params, optimizer, cfg.clip_norm)
        losses.append(loss.item())
        if len(losses) >= 10 and np.mean(losses[-5:]) >= np.mean(losses[-10:-5]):
            return


def validation_mi(
    module: VAE,
    X: sp.csr_matrix,
    rows: np.ndarray,
    batch_size: int,
    covariates: np.ndarray | None = None,
) -> float:
    """Mutual information ``I(x; z)`` (nats) of the posterior means and scales of ``rows``.

    Parameters
    ----------
    module
        The VAE (encoded in evaluation mode; its mode is restored).
    X
        All counts (in memory or on disk).
    rows
        The cells to encode.
    batch_size
        Cells encoded at once.
    covariates
        Covariate codes of every row of ``X`` (None without covariates).

    Returns
    -------
    float
        The joint estimate of :func:`scvae.module.aggregate.aggregate_mi` (the one the
        diagnostics report).
    """
    loc, scale = encode(module, X, batch_size, rows, covariates)
    # The per-dimension MI is not needed here; the joint estimate does not depend on it.
    return aggregate_mi(loc, scale).mi


def update_aggressive_phase(
    state: TrainState,
    module: VAE,
    X: sp.csr_matrix,
    rows: np.ndarray,
    batch_size: int,
    epoch: int,
    covariates: np.ndarray | None = None,
) -> None:
    """After an aggressive epoch, end the phase for good once the code's MI stops rising.

    Parameters
    ----------
    state
        Training progress: ``aggressive`` and ``best_val_mi`` are updated.
    module, X, rows, batch_size, covariates
        As for :func:`validation_mi` (``rows``: the validation cells, or the training
        cells when there are none).
    epoch
        The epoch just trained (0-based), for the log.
    """
    mi = validation_mi(module, X, rows, batch_size, covariates)
    if mi <= state.best_val_mi:
        state.aggressive = False
        log.info("aggressive phase ends after epoch %d (MI %.3f nats)", epoch + 1, mi)
    state.best_val_mi = max(state.best_val_mi, mi)
