"""Training checkpoints: what a run has done so far, written atomically and resumed.

A checkpoint holds the network, the optimizer, torch's random state and a
:class:`TrainState`, under the hash of everything that decides what training computes
(:func:`training_hash`). A rerun with the same hash resumes from it and gives the same numbers
as an uninterrupted run; any other checkpoint is ignored, loudly.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scvae.errors import InputError
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.settings import TrainConfig, settings_hash
from scvae.utils.torchfile import UnsafeFileError, load_tensor_file, save_tensor_file

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the checkpoint in a run's checkpoint directory."""

CHECKPOINT_KIND = "checkpoint"
"""The kind of a checkpoint file (:func:`scvae.utils.torchfile.save_tensor_file`)."""

RESUMABLE_KEYS = ("checkpoint_every", "threads", "device")
"""Training settings that do not change what is computed: a checkpoint written under
other values of them can still be resumed."""

UNSET_UNHASHED_KEYS = ("max_cells", "warmup_cells", "val_every_cells", "val_max_cells")
"""Training settings that enter the hash only when set (not 0): at 0 they train exactly as
before they existed, so checkpoints and config hashes of earlier runs stay valid."""


@dataclass
class TrainState:
    """What a checkpoint holds besides the network and optimizer.

    Attributes
    ----------
    epoch
        Epochs started (completed, unless training stopped mid-epoch).
    step
        Optimizer steps taken (the KL schedule's clock).
    cells_seen
        Training cells seen, summed over steps.
    best_val
        Best validation ELBO so far (early stopping).
    bad_epochs
        Validations (epochs, with validation every epoch) since the validation ELBO last
        improved by ``min_delta``.
    seconds
        Training time so far, summed over resumed runs.
    stopped_early
        Whether training ended before ``max_epochs``: early stopping, or the
        ``max_cells`` cap (``stop_reason`` says which).
    stop_reason
        Why training ended: ``"early_stopping"``, ``"max_cells"`` or ``"max_epochs"``;
        ``""`` while it runs.
    aggressive
        Whether the aggressive phase may still run (it ends for good once the
        validation mutual information stops rising).
    best_val_mi
        Highest validation mutual information of the aggressive phase so far.
    history
        One row per validation (per completed epoch, by default).
    row_sums, row_cells
        Sums of the training loss, ELBO, reconstruction and KL over the ``row_cells``
        cells since the last history row, when validation is counted in cells (a row's
        training means may span epochs); empty and 0 otherwise.
    """

    epoch: int = 0
    step: int = 0
    cells_seen: int = 0
    best_val: float = -math.inf
    bad_epochs: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    stop_reason: str = ""
    aggressive: bool = True
    best_val_mi: float = -math.inf
    history: list[dict] = field(default_factory=list)
    row_sums: list[float] = field(default_factory=list)
    row_cells: int = 0


def training_hash(
    model_cfg: VAEConfig,
    cfg: TrainConfig,
    shape: tuple[int, int],
    nnz: int,
    module: VAE,
    block_size: int | None,
    covariates: np.ndarray | None = None,
    categories: dict[str, list[str]] | None = None,
) -> str:
    """Hash of everything that decides what a training run computes.

    Parameters
    ----------
    model_cfg, cfg
        Model and training settings (the :data:`RESUMABLE_KEYS` are left out, and the
        :data:`UNSET_UNHASHED_KEYS` while they are 0).
    shape, nnz
        Shape and number of stored entries of the counts.
    module
        The freshly built network: the shapes of its parameters count too.
    block_size
        Rows per shuffled block of counts on disk (None: counts in memory).
    covariates, categories
        The covariate codes of every cell and the categories they stand for, of a
        conditional model (None: an unconditional one): a checkpoint of other batch
        assignments is not resumed.

    Returns
    -------
    str
        A short hex digest; a checkpoint resumes only a run with the same one.
    """
    hashed = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in RESUMABLE_KEYS and not (k in UNSET_UNHASHED_KEYS and v == 0)
    }
    # The parameter shapes too: a newer scvae may build other layers from the same settings,
    # and its checkpoint must then not be loaded.
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    parts = [model_cfg.to_dict(), hashed, list(shape), int(nnz), shapes]
    if block_size is not None:
        parts.append({"block_size": block_size})
    if covariates is not None:
        codes = np.ascontiguousarray(covariates, dtype=np.int64)
        digest = hashlib.sha256(codes.tobytes()).hexdigest()
        parts.append({"covariates": [list(codes.shape), digest], "categories": categories})
    return settings_hash(*parts)


def save_checkpoint(
    path: Path,
    module: VAE,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    run_hash: str,
) -> None:
    """Write a checkpoint atomically (a kill mid-write leaves the previous one intact).

    Parameters
    ----------
    path
        The checkpoint file.
    module, optimizer
        The network and optimizer whose state is saved.
    state
        Progress so far.
    run_hash
        The run's :func:`training_hash`.
    """
    tensors = {
        "module": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        # Tensors, numbers and tuples only: weights_only=True loads it.
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    # A file object inside: a full disk is an OSError; no code runs when it is read.
    metadata = {"run_hash": run_hash, "state": state.__dict__}
    save_tensor_file(path, CHECKPOINT_KIND, tensors, metadata)


def load_checkpoint(
    path: Path,
    module: VAE,
    optimizer: torch.optim.Optimizer,
    run_hash: str,
    device: torch.device,
) -> TrainState | None:
    """Restore a checkpoint of the same run into ``module``, ``optimizer`` and torch's RNG.

    Parameters
    ----------
    path
        The checkpoint file.
    module, optimizer
        Loaded in place.
    run_hash
        The run's :func:`training_hash`; a checkpoint written under another is ignored.
    device
        Where the saved tensors go.

    Returns
    -------
    TrainState or None
        The saved progress, or None (start from scratch) when there is no checkpoint,
        it cannot be read, or it belongs to another run.

    Raises
    ------
    InputError
        When the checkpoint holds Python objects beyond tensors and plain values (an
        old-format or crafted file): it is not unpickled, and not silently discarded.
    """
    if not path.exists():
        return None
    try:
        metadata, payload = load_tensor_file(path, CHECKPOINT_KIND, map_location=device)
    except UnsafeFileError as err:
        # Never unpickled; and not silently replaced either: say what it is.
        raise InputError(
            f"{err}. An old or foreign checkpoint is never resumed: delete {path} to train "
            "from scratch"
        ) from None
    except InputError as err:  # a checkpoint cut short by a kill: start over, loudly
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, err)
        return None
    if metadata.get("run_hash") != run_hash:
        log.warning(
            "checkpoint %s was written with other settings, data or model layers; training "
            "from scratch",
            path,
        )
        return None
    module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"].cpu())
    state = TrainState(**metadata["state"])
    log.info("resuming from %s after epoch %d (step %d)", path, state.epoch, state.step)
    return state


def checkpoint_note(path: Path | None) -> str:
    """The end of an error message that says where the last good checkpoint is.

    Parameters
    ----------
    path
        The checkpoint file (None: training keeps no checkpoints).

    Returns
    -------
    str
        ``""`` without checkpoints, else a sentence (starting ``". "``) naming the kept
        checkpoint or saying that none had been written yet.
    """
    if path is None:
        return ""
    if path.exists():
        return f". The last good checkpoint is kept at {path}"
    return f". No checkpoint had been written yet to {path.parent}"
