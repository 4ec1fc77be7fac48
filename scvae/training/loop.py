"""Fit a count VAE: minibatches from sparse counts, KL schedule, free bits, checkpoints."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from scvae.data.loaders import BLOCK_SIZE, CountBatches, counts_matrix
from scvae.data.ondisk import check_counts_chunked, is_ondisk, row_sums
from scvae.errors import InputError, TrainingError
from scvae.model import SCVAE
from scvae.module.vae import VAE
from scvae.training.objective import FreeBitsELBO
from scvae.training.schedules import KLSchedule
from scvae.training.settings import settings_hash, split_settings
from scvae.utils.atomic import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
# Settings that do not change what is computed, so a checkpoint written under other
# values of them can still be resumed.
_RESUMABLE_KEYS = ("checkpoint_every", "threads", "device")
MIN_CELLS = 2
"""Fewest cells :func:`train` accepts: batch normalization needs 2 cells per batch.

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


@dataclass
class _State:
    """What a checkpoint holds besides the network and optimizer."""

    epoch: int = 0
    step: int = 0
    best_val: float = -math.inf
    bad_epochs: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    aggressive: bool = True
    best_val_mi: float = -math.inf
    history: list[dict] = field(default_factory=list)


def _evaluate(
    module: VAE, elbo: FreeBitsELBO, loader: CountBatches, device: torch.device
) -> dict[str, float]:
    """Mean unweighted ELBO, reconstruction and KL per cell over a loader (eval mode)."""
    module.eval()
    sums = np.zeros(3)
    n = 0
    with torch.no_grad():
        for x in loader.epoch(0, device):
            t = elbo.terms(module.model, module.guide, x, 1.0)
            kl = t.kl_per_dim.sum(-1) + t.kl_other
            sums += [t.elbo.sum().item(), t.recon.sum().item(), kl.sum().item()]
            n += x.shape[0]
    module.train()
    return dict(zip(("elbo", "recon", "kl"), (sums / max(n, 1)).tolist(), strict=True))


def _validation_mi(module: VAE, X, rows: np.ndarray, batch_size: int) -> float:
    """Mutual information I(x; z) over ``rows`` of ``X`` (the aggressive phase's stop)."""
    from scvae.diagnostics.core import _encode, mutual_information

    loc, scale = _encode(module, X, batch_size, rows)
    return float(mutual_information(loc, scale, n_samples_per_dim=200)["mi"])


def _step(loss: torch.Tensor, params: list, optimizer, clip_norm: float) -> None:
    """One optimizer step on ``params`` only (the others get no gradient and stay put)."""
    params = [p for p in params if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()


def _encoder_steps(
    module: VAE,
    elbo: FreeBitsELBO,
    batches,
    weight: float,
    optimizer,
    cfg,
) -> None:
    """Encoder-only steps on fresh minibatches until the loss stops improving.

    He et al. (2019) check convergence every few steps; here: stop when the mean loss
    of the last 5 steps is not below that of the 5 before, or after ``aggressive_steps``.
    """
    params = module.inference_parameters()
    losses: list[float] = []
    for _ in range(cfg.aggressive_steps):
        x = next(batches)
        loss = elbo.loss_from_terms(elbo.terms(module.model, module.guide, x, weight))
        if not torch.isfinite(loss):
            return
        _step(loss, params, optimizer, cfg.clip_norm)
        losses.append(loss.item())
        if len(losses) >= 10 and np.mean(losses[-5:]) >= np.mean(losses[-10:-5]):
            return


def _endless(loader: CountBatches, seed_epoch: int, device: torch.device):
    """Minibatches from an endless sequence of reshuffled epochs (the encoder's inner loop)."""
    epoch = seed_epoch
    while True:
        yield from loader.epoch(epoch, device)
        epoch += 1


# Moving-average weight of the newest moment estimate, and the range of theta it may take
# (as the dispersion of a near-Poisson gene, a negative excess variance, is unbounded).
_CALIBRATION_RATE = 0.1
_THETA_RANGE = (1e-4, 1e4)


def _check_calibration(module: VAE) -> None:
    c = module.config
    if c.likelihood == "poisson" or c.theta > 0 or c.dispersion != "gene":
        raise ValueError(
            "training setting calibrated_dispersion=True needs a learned per-gene dispersion "
            f"(likelihood nb or zinb, theta 0, dispersion gene); got likelihood="
            f"{c.likelihood!r}, theta={c.theta}, dispersion={c.dispersion!r}"
        )


def _calibrate_dispersion(module: VAE, x: torch.Tensor) -> None:
    """Move log theta towards its per-gene moment estimate given the current decoder."""
    with torch.no_grad():
        q = module.inference(x)
        library = q["ql"].loc.exp() if q["ql"] is not None else module.library(x)
        mu = module.generative(q["qz"].loc, library, x)["log_mu"].exp()
        excess = ((x - mu) ** 2 - mu).mean(0)
        moment = (mu**2).mean(0) / excess.clamp(min=1e-12)
        estimate = moment.clamp(*_THETA_RANGE).log()
        log_theta = module.px_log_theta
        log_theta.lerp_(estimate, _CALIBRATION_RATE)


def _save_checkpoint(path: Path, module, optimizer, state: _State, run_hash: str) -> None:
    payload = {
        "run_hash": run_hash,
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": state.__dict__,
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)  # a file object: a full disk is an OSError


def _load_checkpoint(path: Path, module, optimizer, run_hash: str, device) -> _State | None:
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # a checkpoint cut short by a kill: start over, loudly
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, err)
        return None
    if payload.get("run_hash") != run_hash:
        log.warning(
            "checkpoint %s was written with other settings, data or model layers; training "
            "from scratch",
            path,
        )
        return None
    module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    state = _State(**payload["state"])
    log.info("resuming from %s after epoch %d (step %d)", path, state.epoch, state.step)
    return state


def _checkpoint_note(ckpt: Path | None) -> str:
    if ckpt is None:
        return ""
    if ckpt.exists():
        return f". The last good checkpoint is kept at {ckpt}"
    return f". No checkpoint had been written yet to {ckpt.parent}"


def _theta_median(module: VAE) -> float:
    log_theta = module.log_theta()
    return float("nan") if log_theta is None else float(log_theta.detach().exp().median())


def train(
    adata: AnnData,
    *,
    layer: str | None = "counts",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    source: str | None = None,
    **settings,
) -> SCVAE:
    """Fit a count VAE to the raw counts of ``adata``.

    Parameters
    ----------
    adata
        Cells x genes with raw integer counts in ``layers[layer]`` (or ``X``).
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
    **settings
        Model settings (:class:`~scvae.module.VAEConfig`) and training settings
        (:class:`~scvae.training.settings.TrainConfig`) in one flat namespace.

    Returns
    -------
    SCVAE
        The fitted model.

    Raises
    ------
    InputError
        If the counts are not raw counts or there are fewer than :data:`MIN_CELLS` cells.
    ValueError
        If a setting is unknown, of the wrong type or out of range (the message names it).
    TrainingError
        If the loss becomes NaN or infinite; the last good checkpoint is kept.
    """
    X = counts_matrix(adata, layer)
    if source is None:
        source = f"AnnData layer {layer!r}" if layer in adata.layers else "AnnData X"
    check_counts_chunked(X, source=source)
    if X.shape[0] < MIN_CELLS:
        raise InputError(
            f"{source}: {X.shape[0]} cell(s); training needs at least {MIN_CELLS} (batch "
            "normalization needs 2 cells per batch). Use more cells, or loosen the "
            "preprocessing filters if they removed almost every cell."
        )
    model_cfg, cfg = split_settings(settings, X.shape[1])
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    pyro.set_rng_seed(cfg.seed)

    train_idx, val_idx = split_cells(X.shape[0], cfg.val_fraction, cfg.seed)
    log_lib = np.log(np.maximum(row_sums(X, train_idx), 1.0))
    module = VAE(
        model_cfg,
        library_log_mean=float(log_lib.mean()),
        library_log_scale=float(max(log_lib.std(), 1e-3)),
    ).to(device)
    # Counts on disk are shuffled by blocks of rows (see CountBatches): far fewer reads.
    block_size = BLOCK_SIZE if is_ondisk(X) else None
    train_loader = CountBatches(
        X, train_idx, cfg.batch_size, shuffle=True, seed=cfg.seed, block_size=block_size
    )
    val_loader = CountBatches(X, val_idx, max(cfg.batch_size, 1024)) if len(val_idx) else None

    if cfg.calibrated_dispersion:
        _check_calibration(module)
        # Set by _calibrate_dispersion, not by the optimizer.
        module.px_log_theta.requires_grad_(False)
    # foreach: the multi-tensor Adam, the same arithmetic per tensor (bit-identical on
    # CPU, where torch does not pick it by default) with fewer Python-level operations.
    optimizer = torch.optim.Adam(
        module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, foreach=True
    )
    elbo = FreeBitsELBO(free_bits=cfg.free_bits)
    schedule = KLSchedule(
        kind=cfg.kl_schedule,
        beta=cfg.beta,
        total_steps=cfg.max_epochs * len(train_loader),
        warmup_fraction=cfg.warmup_fraction,
        n_cycles=cfg.n_cycles,
        ratio=cfg.cycle_ratio,
    )
    hashed = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_KEYS}
    # The parameter shapes too: a newer scvae may build other layers from the same settings,
    # and its checkpoint must then not be loaded.
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    parts = [model_cfg.to_dict(), hashed, list(X.shape), int(X.nnz), shapes]
    if block_size is not None:
        parts.append({"block_size": block_size})
    run_hash = settings_hash(*parts)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None:
        # A kill while a checkpoint was being written leaves its temporary file behind.
        remove_stale_temps(ckpt)
    state = (ckpt and _load_checkpoint(ckpt, module, optimizer, run_hash, device)) or _State()

    log.info(
        "training on %d cells (%d validation), %d genes, %d steps/epoch, device %s",
        len(train_idx),
        len(val_idx),
        X.shape[1],
        len(train_loader),
        device,
    )
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
        sums = np.zeros(4)
        n = 0
        module.train()
        aggressive = state.aggressive and epoch < cfg.aggressive_epochs
        if aggressive:
            # Seeded per epoch, apart from the epochs' own shuffles: resumes stay exact.
            inner = _endless(train_loader, 1_000_003 * (epoch + 1), device)
        for x in train_loader.epoch(epoch, device):
            weight = schedule(state.step)
            if aggressive:
                _encoder_steps(module, elbo, inner, weight, optimizer, cfg)
            t = elbo.terms(module.model, module.guide, x, weight)
            loss = elbo.loss_from_terms(t)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {state.step}: "
                    f"the learning rate (lr={cfg.lr:g}) may be too high for this data, or the "
                    "input may not be raw counts; lower lr or check the input"
                    + _checkpoint_note(ckpt)
                )
            if aggressive:
                _step(loss, module.generative_parameters(), optimizer, cfg.clip_norm)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip_norm)
                optimizer.step()
            if cfg.calibrated_dispersion:
                _calibrate_dispersion(module, x)
            state.step += 1
            with torch.no_grad():
                b = x.shape[0]
                kl = t.kl_per_dim.sum(-1) + t.kl_other
                sums += [
                    loss.item() * b,
                    t.elbo.sum().item(),
                    t.recon.sum().item(),
                    kl.sum().item(),
                ]
                n += b
        train_loss, train_elbo, train_recon, train_kl = (sums / n).tolist()
        val = _evaluate(module, elbo, val_loader, device) if val_loader else {}
        if aggressive:
            # He et al.: leave the aggressive phase once the code's MI stops rising.
            rows = val_idx if len(val_idx) else train_idx
            mi = _validation_mi(module, X, rows, max(cfg.batch_size, 1024))
            if mi <= state.best_val_mi:
                state.aggressive = False
                log.info("aggressive phase ends after epoch %d (MI %.3f nats)", epoch + 1, mi)
            state.best_val_mi = max(state.best_val_mi, mi)
        state.seconds += time.perf_counter() - started
        state.epoch = epoch + 1
        state.history.append(
            {
                "epoch": state.epoch,
                "step": state.step,
                "kl_weight": schedule(max(state.step - 1, 0)),
                "train_loss": train_loss,
                "train_elbo": train_elbo,
                "train_recon": train_recon,
                "train_kl": train_kl,
                "val_elbo": val.get("elbo", math.nan),
                "val_recon": val.get("recon", math.nan),
                "val_kl": val.get("kl", math.nan),
                "theta_median": _theta_median(module),
                "aggressive": aggressive,
                "seconds": state.seconds,
            }
        )
        bar.set_postfix(
            elbo=f"{train_elbo:.1f}", kl=f"{train_kl:.2f}", w=f"{schedule(state.step):.2f}"
        )
        if cfg.early_stopping and val and state.step >= schedule.warmup_steps:
            if val["elbo"] > state.best_val + cfg.min_delta:
                state.best_val, state.bad_epochs = val["elbo"], 0
            else:
                state.bad_epochs += 1
                if state.bad_epochs >= cfg.patience:
                    state.stopped_early = True
                    log.info(
                        "early stopping after epoch %d (val ELBO %.2f)", state.epoch, val["elbo"]
                    )
        last = state.epoch == cfg.max_epochs or state.stopped_early
        if ckpt is not None and (state.epoch % cfg.checkpoint_every == 0 or last):
            _save_checkpoint(ckpt, module, optimizer, state, run_hash)
        if state.stopped_early:
            break
    bar.close()
    module.eval()

    history = pd.DataFrame(state.history)
    final = state.history[-1] if state.history else {}
    summary = {
        "epochs": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_seconds": state.seconds,
        "final_train_elbo": final.get("train_elbo", math.nan),
        "final_train_kl": final.get("train_kl", math.nan),
        "final_val_elbo": final.get("val_elbo", math.nan),
        "final_val_kl": final.get("val_kl", math.nan),
        "n_train_cells": int(len(train_idx)),
        "n_val_cells": int(len(val_idx)),
        "device": str(device),
        "config_hash": run_hash,
    }
    split = np.full(X.shape[0], "train", dtype=object)
    split[val_idx] = "validation"
    return SCVAE(module, cfg, list(map(str, adata.var_names)), history, summary, split)


def run_train(
    input_h5ad: str | os.PathLike,
    model_out: str | os.PathLike,
    history_out: str | os.PathLike,
    latent_out: str | os.PathLike,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    settings: dict | None = None,
) -> SCVAE:
    """Train on a preprocessed h5ad and write the model, the history and the latent AnnData.

    The latent AnnData is the input plus ``obsm["X_scvae"]`` (posterior means),
    ``obsm["X_scvae_scale"]`` (posterior standard deviations), ``obs["scvae_split"]``
    (train / validation) and ``uns["scvae"]["train"]`` (settings, summary, versions).

    Parameters
    ----------
    input_h5ad
        Preprocessed AnnData with counts in ``layers["counts"]``.
    model_out, history_out, latent_out
        Output paths (``model.pt``, ``history.tsv``, ``latent.h5ad``), each written atomically.
    checkpoint_dir
        Where training checkpoints live (resumed when present).
    settings
        Flat model and training settings.

    Returns
    -------
    SCVAE
        The fitted model.
    """
    from scvae.data.readers import read_h5ad, write_h5ad
    from scvae.utils.provenance import versions

    settings = dict(settings or {})
    for out in (model_out, history_out, latent_out):
        # Left by a run of this job that was killed while writing.
        remove_stale_temps(out)
    # Large files stay on disk (scvae.data.ondisk.backed_min_bytes): memory bounded by batches.
    adata = read_h5ad(input_h5ad, backed=None)
    where = "layers['counts']" if "counts" in adata.layers else "X"
    model = train(
        adata, checkpoint_dir=checkpoint_dir, source=f"{input_h5ad} ({where})", **settings
    )
    model.save(model_out)
    with atomic_path(history_out) as tmp:
        model.history.to_csv(tmp, sep="\t", index=False)
    loc, scale = model.get_latent(adata, return_scale=True)
    adata.obsm["X_scvae"] = loc
    adata.obsm["X_scvae_scale"] = scale
    adata.obs["scvae_split"] = pd.Categorical(model.split, categories=["train", "validation"])
    adata.uns.setdefault("scvae", {})["train"] = {
        "model": model.module.config.to_dict(),
        "training": model.train_config.to_dict(),
        "summary": model.summary,
        "versions": versions(),
    }
    write_h5ad(adata, latent_out)
    log.info(
        "wrote %s, %s and %s (obsm['X_scvae'], obsm['X_scvae_scale'])",
        model_out,
        history_out,
        latent_out,
    )
    return model
