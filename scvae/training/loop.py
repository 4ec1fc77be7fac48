"""Fit a count VAE: minibatches from sparse counts, KL schedule, free bits, checkpoints.

:func:`fit` builds the run (data split, network, loaders, optimizer, objective,
schedule; resumed from a checkpoint when there is one), then trains epoch by epoch
(:func:`train_epoch`, with the aggressive phase of :mod:`scvae.training.aggressive` and
the calibrated dispersion of :mod:`scvae.training.calibration`), closes each epoch with
validation, early stopping and a checkpoint, and returns the trained network with its
record (:class:`FitResult`), which :class:`scvae.SCVAE` wraps.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from scvae.data.checks import check_counts_chunked
from scvae.data.covariates import covariate_categories, covariate_codes
from scvae.data.loaders import BLOCK_SIZE, CountBatches, counts_matrix, counts_source
from scvae.data.ondisk import is_ondisk, row_sums
from scvae.errors import InputError, TrainingError
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.aggressive import (
    encoder_batches,
    encoder_steps,
    optimizer_step,
    update_aggressive_phase,
)
from scvae.training.calibration import calibrate_dispersion, freeze_dispersion
from scvae.training.checkpoint import (
    CHECKPOINT_NAME,
    TrainState,
    checkpoint_note,
    load_checkpoint,
    save_checkpoint,
    training_hash,
)
from scvae.training.objective import ElboTerms, FreeBitsELBO
from scvae.training.schedules import CellClock, KLSchedule
from scvae.training.settings import TrainConfig, split_settings
from scvae.utils.atomic import remove_stale_temps

log = logging.getLogger(__name__)

MIN_CELLS = 2
"""Fewest cells :func:`fit` accepts: batch normalization needs 2 cells per batch.

The batch size adapts to small data (it is capped at the number of training cells, and
a last batch of one cell joins the previous one), so any number of cells from this one
up trains without changing settings.
"""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={name!r} was requested but torch sees no CUDA device")
    return torch.device(name)


def split_cells(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of ``n`` cells (validation may be empty)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if n - n_val < 2:
        n_val = 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# A seed-sequence word that no epoch's shuffle ([seed, epoch]) uses.
_VALIDATION_STREAM = 2**32 - 1


def validation_subsample(val_idx: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """The held-out cells that validation evaluates: all, or a fixed random subsample.

    Parameters
    ----------
    val_idx
        Rows of the held-out cells (sorted).
    max_cells
        Most cells to evaluate (0: all of them).
    seed
        Seed of the draw; the same seed gives the same cells, on every validation of
        the run and on a resumed run.

    Returns
    -------
    numpy.ndarray
        Sorted rows, a subset of ``val_idx`` of size ``min(max_cells, len(val_idx))``.
    """
    if max_cells <= 0 or len(val_idx) <= max_cells:
        return val_idx
    rng = np.random.default_rng([seed, _VALIDATION_STREAM])
    return np.sort(rng.choice(val_idx, size=max_cells, replace=False))


@dataclass
class TrainingRun:
    """What :func:`train` builds before its first epoch, and the progress it makes.

    Attributes
    ----------
    X
        The counts (in memory or on disk).
    cfg
        Training settings.
    device
        Where the network and the batches live.
    train_idx, val_idx
        Rows of the training and validation cells.
    val_rows
        The validation cells that validation evaluates (:func:`validation_subsample`).
    module
        The network.
    train_loader, val_loader
        Minibatches of the training cells (shuffled per epoch) and of ``val_rows``
        (None when there are none).
    optimizer
        Adam over every parameter of the module.
    elbo
        The objective.
    schedule
        The KL weight per step.
    clock
        Cells seen after each step (converts the budget in cells into steps).
    run_hash
        :func:`~scvae.training.checkpoint.training_hash` of the run.
    checkpoint
        The checkpoint file (None: no checkpoints).
    state
        Progress so far (restored from the checkpoint when resuming).
    covariates
        Covariate codes of every cell (cells x covariates, the batch first) of a
        conditional model; None for an unconditional one.
    val_every
        Cells seen between validations within an epoch: ``cfg.val_every_cells``, or 0
        (once per epoch) when that is 0 or at least an epoch's cells.
    """

    X: sp.csr_matrix
    cfg: TrainConfig
    device: torch.device
    train_idx: np.ndarray
    val_idx: np.ndarray
    val_rows: np.ndarray
    module: VAE
    train_loader: CountBatches
    val_loader: CountBatches | None
    optimizer: torch.optim.Optimizer
    elbo: FreeBitsELBO
    schedule: KLSchedule
    clock: CellClock
    run_hash: str
    checkpoint: Path | None
    state: TrainState
    covariates: np.ndarray | None = None
    val_every: int = 0


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained network and the record of its training.

    Attributes
    ----------
    module
        The trained network, in evaluation mode.
    train_config
        The training settings.
    history
        One row per validation (per epoch unless ``val_every_cells`` says otherwise):
        losses, KL weight, dispersion, steps and cells seen.
    summary
        Epochs and steps run, whether early stopping ended it, final losses, timings.
    split
        ``"train"`` or ``"validation"`` for each cell, in the data's order.
    categories
        Column -> categories of each covariate the model is conditioned on (the batch
        first); empty for an unconditional model.
    """

    module: VAE
    train_config: TrainConfig
    history: pd.DataFrame
    summary: dict
    split: np.ndarray
    categories: dict[str, list[str]]


def fit(
    adata: AnnData,
    settings: dict,
    *,
    batch_key: str | None = None,
    covariate_keys: tuple[str, ...] | list[str] = (),
    layer: str | None = "counts",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    source: str | None = None,
) -> FitResult:
    """Fit a count VAE to the raw counts of ``adata``.

    The user-facing way is :class:`scvae.SCVAE` (or :func:`scvae.train`), which fills the
    settings from a preset and wraps the result.

    Parameters
    ----------
    adata
        Cells x genes with raw integer counts in ``layers[layer]`` (or ``X``).
    settings
        Model settings (:class:`~scvae.module.VAEConfig`) and training settings
        (:class:`~scvae.training.settings.TrainConfig`) in one flat namespace; those
        left out take the package defaults.
    batch_key
        obs column of each cell's batch (sample, plate, donor, ...); None: no batch.
    covariate_keys
        obs columns of other categorical covariates. With ``condition_on_batch`` (the
        default) the model is conditioned on the batch and these (a conditional VAE);
        their categories, sorted, are recorded in :attr:`FitResult.categories`.
    layer
        Layer holding the counts.
    checkpoint_dir
        Where to keep ``checkpoint.pt``; a rerun with the same settings resumes from it.
        Keep it outside the workflow's declared outputs (Snakemake deletes those when a
        job fails).
    progress
        Show a progress bar (None: only on a terminal).
    source
        What the data came from (a file name), for error messages; default: the layer.

    Returns
    -------
    FitResult
        The trained network and its record.

    Raises
    ------
    InputError
        If the counts are not raw counts, there are fewer than :data:`MIN_CELLS` cells,
        or a batch or covariate column is missing or has empty values.
    ValueError
        If a setting is unknown, of the wrong type or out of range (the message names it).
    TrainingError
        If the loss becomes NaN or infinite; the last good checkpoint is kept.
    """
    if source is None:
        source = f"AnnData {counts_source(adata, layer)}"
    X = _checked_counts(adata, layer, source)
    keys = ([batch_key] if batch_key is not None else []) + list(covariate_keys)
    # Checked even when unused (condition_on_batch false): a typo should not pass silently.
    categories = covariate_categories(adata, keys, source=source)
    if not settings.get("condition_on_batch", True):
        categories = {}
    covariates = covariate_codes(adata, categories, source=source)
    run = build_run(
        X,
        settings,
        checkpoint_dir,
        covariates=covariates,
        categories=categories,
        has_batch=batch_key is not None,
    )
    log.info(
        "training on %d cells (%d validation), %d genes, %d steps/epoch, device %s",
        len(run.train_idx),
        len(run.val_idx),
        X.shape[1],
        len(run.train_loader),
        run.device,
    )
    state, cfg = run.state, run.cfg
    bar = tqdm(
        range(state.epoch, cfg.max_epochs),
        initial=state.epoch,
        total=cfg.max_epochs,
        disable=None if progress is None else not progress,
        desc="epochs",
    )
    for epoch in bar:
        if state.stopped_early:
            break
        started = time.perf_counter()
        aggressive = state.aggressive and epoch < cfg.aggressive_epochs
        means = train_epoch(run, epoch, aggressive)
        end_epoch(run, epoch, aggressive, means, started)
        bar.set_postfix(
            elbo=f"{means['train_elbo']:.1f}",
            kl=f"{means['train_kl']:.2f}",
            w=f"{run.schedule(state.step):.2f}",
        )
        if state.stopped_early:
            break
    bar.close()
    run.module.eval()
    return _fit_result(run, categories)


def _checked_counts(adata: AnnData, layer: str | None, source: str) -> sp.csr_matrix:
    """The raw counts of ``adata``, checked to be counts of at least :data:`MIN_CELLS` cells.

    Values within float rounding of an integer come back rounded (a copy in memory, rounded
    as read on disk), so that training sees integers; ``adata`` is left as it is.
    """
    X = check_counts_chunked(
        counts_matrix(adata, layer),
        source=source,
        obs_names=adata.obs_names,
        var_names=adata.var_names,
    )
    if X.shape[0] < MIN_CELLS:
        raise InputError(
            f"{source}: {X.shape[0]} cell(s); training needs at least {MIN_CELLS} (batch "
            "normalization needs 2 cells per batch). Use more cells, or loosen the "
            "preprocessing filters if they removed almost every cell."
        )
    return X


def build_run(
    X: sp.csr_matrix,
    settings: dict,
    checkpoint_dir: str | os.PathLike | None,
    *,
    covariates: np.ndarray | None = None,
    categories: dict[str, list[str]] | None = None,
    has_batch: bool = False,
) -> TrainingRun:
    """Everything a training run needs before its first epoch; resumed when it can be.

    Parameters
    ----------
    X
        Raw counts, cells x genes (in memory or on disk).
    settings
        Flat model and training settings.
    checkpoint_dir
        Where the checkpoint lives (None: no checkpoints).
    covariates
        Codes of the covariates the model is conditioned on, cells x covariates (the
        batch first); None: an unconditional model.
    categories
        Column -> categories of those covariates (their count sizes the one-hot codes).
    has_batch
        Whether the first covariate is the batch (per-batch library prior and
        dispersion).

    Returns
    -------
    TrainingRun
        The run, with its state restored from a checkpoint of the same run if any.
    """
    categories = categories or {}
    if (covariates is None) != (not categories):
        raise ValueError("covariates and categories go together")
    n_categories = tuple(len(v) for v in categories.values())
    n_batch = n_categories[0] if has_batch and n_categories else 0
    model_cfg, cfg = split_settings(settings, X.shape[1], n_categories, n_batch)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    # Seeds torch, numpy and random: the initial weights and every draw of training.
    pyro.set_rng_seed(cfg.seed)

    train_idx, val_idx = split_cells(X.shape[0], cfg.val_fraction, cfg.seed)
    module = _build_module(model_cfg, X, train_idx, device, covariates)
    # Counts on disk are shuffled by blocks of rows (see CountBatches): far fewer reads.
    block_size = BLOCK_SIZE if is_ondisk(X) else None
    train_loader = CountBatches(
        X,
        train_idx,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        block_size=block_size,
        covariates=covariates,
    )
    val_rows = validation_subsample(val_idx, cfg.val_max_cells, cfg.seed)
    val_loader = (
        CountBatches(X, val_rows, max(cfg.batch_size, 1024), covariates=covariates)
        if len(val_rows)
        else None
    )

    if cfg.calibrated_dispersion:
        freeze_dispersion(module)
    # foreach: the multi-tensor Adam, the same arithmetic per tensor (bit-identical on
    # CPU, where torch does not pick it by default) with fewer Python-level operations.
    optimizer = torch.optim.Adam(
        module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, foreach=True
    )
    # Every epoch has the same batch sizes: a budget in cells is a known number of steps.
    clock = CellClock([len(rows) for rows in train_loader.batches(0)])
    schedule = KLSchedule(
        kind=cfg.kl_schedule,
        beta=cfg.beta,
        total_steps=clock.planned_steps(cfg.max_epochs, cfg.max_cells),
        warmup_fraction=cfg.warmup_fraction,
        n_cycles=cfg.n_cycles,
        ratio=cfg.cycle_ratio,
        max_warmup_steps=clock.steps_to(cfg.warmup_cells) if cfg.warmup_cells else 0,
    )
    run_hash = training_hash(
        model_cfg, cfg, X.shape, X.nnz, module, block_size, covariates, categories or None
    )
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None:
        # A kill while a checkpoint was being written leaves its temporary file behind.
        remove_stale_temps(ckpt)
    state = (ckpt and load_checkpoint(ckpt, module, optimizer, run_hash, device)) or TrainState()
    if state.step and not state.cells_seen:
        # A checkpoint from before cells were counted: its rows and its end were epoch
        # ends, so the steps tell the cells.
        state.cells_seen = clock.cells_at(state.step)
        for row in state.history:
            row.setdefault("cells_seen", clock.cells_at(row["step"]))
    return TrainingRun(
        X=X,
        cfg=cfg,
        device=device,
        train_idx=train_idx,
        val_idx=val_idx,
        val_rows=val_rows,
        module=module,
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        elbo=FreeBitsELBO(free_bits=cfg.free_bits),
        schedule=schedule,
        clock=clock,
        run_hash=run_hash,
        checkpoint=ckpt,
        state=state,
        covariates=covariates,
        # An epoch shorter than the cadence validates once per epoch, as without one, so
        # that a small dataset trains as it did before the cadence in cells existed.
        val_every=cfg.val_every_cells if cfg.val_every_cells < clock.cells_per_epoch else 0,
    )


def _build_module(
    model_cfg: VAEConfig,
    X: sp.csr_matrix,
    train_idx: np.ndarray,
    device: torch.device,
    covariates: np.ndarray | None = None,
) -> VAE:
    """The network, with the library prior of the training cells (per batch with a batch)."""
    log_lib = np.log(np.maximum(row_sums(X, train_idx), 1.0))
    mean, scale = float(log_lib.mean()), float(max(log_lib.std(), 1e-3))
    if model_cfg.n_batch == 0:
        return VAE(model_cfg, library_log_mean=mean, library_log_scale=scale).to(device)
    # scVI's per-batch prior; a batch with fewer than 2 training cells has no spread of
    # its own and takes the prior of all cells.
    batch = covariates[train_idx, 0]
    means, scales = [mean] * model_cfg.n_batch, [scale] * model_cfg.n_batch
    for b in range(model_cfg.n_batch):
        values = log_lib[batch == b]
        if len(values) >= 2:
            means[b], scales[b] = float(values.mean()), float(max(values.std(), 1e-3))
    return VAE(model_cfg, library_log_mean=means, library_log_scale=scales).to(device)


def train_epoch(run: TrainingRun, epoch: int, aggressive: bool) -> dict[str, float]:
    """One pass over the training cells, or less when training ends within it.

    With ``val_every_cells`` set, each step that brings the cells seen to the next
    multiple of it validates: a history row, and a count for early stopping. The epoch
    ends at the step where early stopping or the ``max_cells`` cap ends training
    (``run.state.stopped_early``); :func:`end_epoch` closes it either way.

    Parameters
    ----------
    run
        The run; its module, optimizer and ``state.step`` advance.
    epoch
        The epoch (0-based): it seeds the shuffle.
    aggressive
        Whether this epoch is in the aggressive phase (encoder-only steps before each
        step of the decoder).

    Returns
    -------
    dict
        Means per cell over the epoch's steps: ``train_loss``, ``train_elbo``,
        ``train_recon``, ``train_kl``.

    Raises
    ------
    TrainingError
        If the loss is NaN or infinite.
    """
    state, cfg = run.state, run.cfg
    started = time.perf_counter()
    sums = np.zeros(4)
    n = 0
    every = run.val_every
    # Training sums since the last history row: a row's span may cross epochs.
    row = np.asarray(state.row_sums, dtype=float) if state.row_sums else np.zeros(4)
    next_row = _next_validation(state, every)
    run.module.train()
    inner = encoder_batches(run.train_loader, epoch, run.device) if aggressive else None
    for x, c in run.train_loader.epoch(epoch, run.device):
        loss, t = _train_step(run, x, c, epoch, inner)
        with torch.no_grad():
            b = x.shape[0]
            kl = t.kl_per_dim.sum(-1) + t.kl_other
            terms = [
                loss.item() * b,
                t.elbo.sum().item(),
                t.recon.sum().item(),
                kl.sum().item(),
            ]
        sums += terms
        n += b
        if every:
            row += terms
            state.row_cells += b
            if state.cells_seen >= next_row:
                seconds = state.seconds + time.perf_counter() - started
                means = _means(row, state.row_cells)
                _append_row(run, epoch, means, _validate(run), aggressive, seconds)
                row[:], state.row_cells = 0.0, 0
                next_row = _next_validation(state, every)
        if cfg.max_cells and state.cells_seen >= cfg.max_cells and not state.stopped_early:
            state.stopped_early, state.stop_reason = True, "max_cells"
            log.info("stopping at the cap of %d cells seen (step %d)", cfg.max_cells, state.step)
        if state.stopped_early:
            break
    if every:
        state.row_sums = row.tolist()
    return _means(sums, n)


def _means(sums: np.ndarray, n: int) -> dict[str, float]:
    """Training means per cell from the sums of :func:`train_epoch` over ``n`` cells."""
    keys = ("train_loss", "train_elbo", "train_recon", "train_kl")
    return dict(zip(keys, (sums / max(n, 1)).tolist(), strict=True))


def _next_validation(state: TrainState, every: int) -> int:
    """The cells seen at which the next validation is due, ``every`` cells apart.

    Parameters
    ----------
    state
        Training progress; its last history row holds the cells seen at the last
        validation.
    every
        ``val_every_cells`` (0: validation only at the end of each epoch).

    Returns
    -------
    int
        The next multiple of ``every`` after the last validation (a step that passes
        several multiples validates once); never reached when ``every`` is 0.
    """
    if not every:
        return np.iinfo(np.int64).max
    last = state.history[-1]["cells_seen"] if state.history else 0
    return (last // every + 1) * every


def _train_step(
    run: TrainingRun,
    x: torch.Tensor,
    c: torch.Tensor | None,
    epoch: int,
    inner: Iterator[tuple[torch.Tensor, torch.Tensor | None]] | None,
) -> tuple[torch.Tensor, ElboTerms]:
    """One step on the minibatch ``x`` (codes ``c``), after the encoder's steps on ``inner``."""
    module, cfg, state, optimizer = run.module, run.cfg, run.state, run.optimizer
    weight = run.schedule(state.step)
    if inner is not None:
        encoder_steps(module, run.elbo, inner, weight, optimizer, cfg)
    t = run.elbo.terms(module.model, module.guide, x, c, weight)
    loss = run.elbo.loss_from_terms(t)
    if not torch.isfinite(loss):
        raise TrainingError(
            f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {state.step}: "
            f"the learning rate (lr={cfg.lr:g}) may be too high for this data, or the "
            "input may not be raw counts; lower lr or check the input"
            + checkpoint_note(run.checkpoint)
        )
    if inner is not None:
        optimizer_step(loss, module.generative_parameters(), optimizer, cfg.clip_norm)
    else:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_norm)
        optimizer.step()
    if cfg.calibrated_dispersion:
        calibrate_dispersion(module, x, c)
    state.step += 1
    state.cells_seen += x.shape[0]
    return loss, t


def end_epoch(
    run: TrainingRun, epoch: int, aggressive: bool, means: dict[str, float], started: float
) -> None:
    """Close an epoch: validate and record it, check early stopping, write a checkpoint.

    With validation every ``val_every_cells`` cells, the epoch gets no row of its own
    (:func:`train_epoch` validated within it), except a last one when training ends
    here and its last step has none yet.

    Parameters
    ----------
    run
        The run; its state gets the epoch's history row.
    epoch
        The epoch just trained (0-based).
    aggressive
        Whether it was in the aggressive phase (then the phase may end here).
    means
        The epoch's training means (:func:`train_epoch`).
    started
        ``time.perf_counter()`` at the start of the epoch.
    """
    state, cfg = run.state, run.cfg
    ending = state.stopped_early or epoch + 1 >= cfg.max_epochs
    row_means = None
    if not run.val_every:
        row_means = means
    elif ending and state.row_cells:
        row_means = _means(np.asarray(state.row_sums, dtype=float), state.row_cells)
        state.row_sums, state.row_cells = [], 0
    val = _validate(run) if row_means is not None else {}
    if aggressive:
        rows = run.val_rows if len(run.val_rows) else run.train_idx
        update_aggressive_phase(
            state, run.module, run.X, rows, max(cfg.batch_size, 1024), epoch, run.covariates
        )
    state.seconds += time.perf_counter() - started
    state.epoch = epoch + 1
    if row_means is not None:
        _append_row(run, epoch, row_means, val, aggressive, state.seconds)
    if state.epoch == cfg.max_epochs and not state.stop_reason:
        state.stop_reason = "max_epochs"
    last = state.epoch == cfg.max_epochs or state.stopped_early
    if run.checkpoint is not None and (state.epoch % cfg.checkpoint_every == 0 or last):
        save_checkpoint(run.checkpoint, run.module, run.optimizer, state, run.run_hash)


def _validate(run: TrainingRun) -> dict[str, float]:
    """The validation means (:func:`_evaluate`) of the run's validation cells, if any."""
    return _evaluate(run.module, run.elbo, run.val_loader, run.device) if run.val_loader else {}


def _append_row(
    run: TrainingRun,
    epoch: int,
    means: dict[str, float],
    val: dict[str, float],
    aggressive: bool,
    seconds: float,
) -> None:
    """Add a history row at the current step; count it for early stopping after the warm-up."""
    state, cfg = run.state, run.cfg
    state.history.append(
        {
            "epoch": epoch + 1,
            "step": state.step,
            "cells_seen": state.cells_seen,
            "kl_weight": run.schedule(max(state.step - 1, 0)),
            **means,
            "val_elbo": val.get("elbo", math.nan),
            "val_recon": val.get("recon", math.nan),
            "val_kl": val.get("kl", math.nan),
            "theta_median": _theta_median(run.module),
            "aggressive": aggressive,
            "seconds": seconds,
        }
    )
    if cfg.early_stopping and val and state.step >= run.schedule.warmup_steps:
        _update_early_stopping(state, cfg, val["elbo"])


def _evaluate(
    module: VAE, elbo: FreeBitsELBO, loader: CountBatches, device: torch.device
) -> dict[str, float]:
    """Mean unweighted ELBO, reconstruction and KL per cell over a loader (eval mode)."""
    module.eval()
    sums = np.zeros(3)
    n = 0
    with torch.no_grad():
        for x, c in loader.epoch(0, device):
            t = elbo.terms(module.model, module.guide, x, c, 1.0)
            kl = t.kl_per_dim.sum(-1) + t.kl_other
            sums += [t.elbo.sum().item(), t.recon.sum().item(), kl.sum().item()]
            n += x.shape[0]
    module.train()
    return dict(zip(("elbo", "recon", "kl"), (sums / max(n, 1)).tolist(), strict=True))


def _theta_median(module: VAE) -> float:
    log_theta = module.log_theta()
    return float("nan") if log_theta is None else float(log_theta.detach().exp().median())


def _update_early_stopping(state: TrainState, cfg: TrainConfig, val_elbo: float) -> None:
    """Count a validation without improvement of the ELBO; stop after ``patience`` of them."""
    if val_elbo > state.best_val + cfg.min_delta:
        state.best_val, state.bad_epochs = val_elbo, 0
        return
    state.bad_epochs += 1
    if state.bad_epochs >= cfg.patience and not state.stopped_early:
        state.stopped_early, state.stop_reason = True, "early_stopping"
        log.info(
            "early stopping at step %d, %d cells seen (val ELBO %.2f)",
            state.step,
            state.cells_seen,
            val_elbo,
        )


def budget_summary(run: TrainingRun) -> dict:
    """Where training stopped, in steps and cells, relative to the end of the KL warm-up.

    For the model's summary (``uns["scvae"]["train"]["summary"]``).

    Parameters
    ----------
    run
        The run, after training.

    Returns
    -------
    dict
        ``steps``, ``cells_seen``, ``epochs_seen`` (cells seen over the training cells),
        ``warmup_end_step`` and ``warmup_end_cells`` (the first step, and the cells seen
        by then, from which the KL weight stays at beta; 0 for a constant weight),
        ``stopped_after_warmup_cells`` and ``stopped_after_warmup_epochs`` (how far past
        that training went; negative when it ended before the warm-up did),
        ``stop_reason`` (``early_stopping``, ``max_cells``, ``max_epochs``; ``""`` if it
        has not ended) and ``stopped_early`` (whether early stopping ended it).
    """
    state = run.state
    warmup_step = run.schedule.warmup_steps
    warmup_cells = run.clock.cells_at(warmup_step)
    per_epoch = run.clock.cells_per_epoch
    return {
        "steps": state.step,
        "cells_seen": state.cells_seen,
        "epochs_seen": state.cells_seen / per_epoch,
        "warmup_end_step": warmup_step,
        "warmup_end_cells": warmup_cells,
        "stopped_after_warmup_cells": state.cells_seen - warmup_cells,
        "stopped_after_warmup_epochs": (state.cells_seen - warmup_cells) / per_epoch,
        "stop_reason": state.stop_reason,
        "stopped_early": state.stop_reason == "early_stopping",
    }


def _fit_result(run: TrainingRun, categories: dict[str, list[str]]) -> FitResult:
    """The trained network with its history, summary, each cell's split and its covariates."""
    state = run.state
    history = pd.DataFrame(state.history)
    final = state.history[-1] if state.history else {}
    summary = {
        "epochs": state.epoch,
        "train_seconds": state.seconds,
        "final_train_elbo": final.get("train_elbo", math.nan),
        "final_train_kl": final.get("train_kl", math.nan),
        "final_val_elbo": final.get("val_elbo", math.nan),
        "final_val_kl": final.get("val_kl", math.nan),
        "n_train_cells": int(len(run.train_idx)),
        "n_val_cells": int(len(run.val_idx)),
        "device": str(run.device),
        "config_hash": run.run_hash,
    }
    # Steps, cells seen, and where training stopped relative to the KL warm-up.
    summary.update(budget_summary(run))
    split = np.full(run.X.shape[0], "train", dtype=object)
    split[run.val_idx] = "validation"
    return FitResult(run.module, run.cfg, history, summary, split, categories)
