"""A fitted model: the trained VAE with its settings, usable without the workflow."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae.data.loaders import counts_matrix
from scvae.data.ondisk import take_columns
from scvae.errors import InputError
from scvae.module.config import VAEConfig
from scvae.module.encoding import encode
from scvae.module.vae import VAE
from scvae.training.settings import TrainConfig
from scvae.utils.atomic import atomic_path

log = logging.getLogger(__name__)


class SCVAE:
    """A trained count VAE.

    Create one with :func:`scvae.train`, or load one with :meth:`SCVAE.load`.

    Parameters
    ----------
    module
        The trained network (Pyro model and guide).
    train_config
        The settings it was trained with.
    var_names
        Genes, in the order the model expects them.
    history
        Per-epoch losses.
    summary
        Final losses, epochs run, timings.
    split
        ``"train"`` or ``"validation"`` for each training cell, in the training order.
    """

    def __init__(
        self,
        module: VAE,
        train_config: TrainConfig,
        var_names: list[str],
        history: pd.DataFrame | None = None,
        summary: dict | None = None,
        split: np.ndarray | None = None,
    ) -> None:
        self.module = module
        self.train_config = train_config
        self.var_names = list(var_names)
        self.history = history if history is not None else pd.DataFrame()
        self.summary = summary or {}
        self.split = np.asarray(split if split is not None else [], dtype=object)

    @property
    def device(self) -> torch.device:
        """Where the module's parameters live."""
        return next(self.module.parameters()).device

    def aligned_counts(self, adata: AnnData, layer: str | None = "counts") -> sp.csr_matrix:
        """Counts of ``adata`` with the model's genes in the model's order."""
        X = counts_matrix(adata, layer)
        if list(adata.var_names) == self.var_names:
            return X
        missing = [g for g in self.var_names if g not in adata.var_names]
        if missing:
            raise InputError(
                f"{len(missing)} of the model's {len(self.var_names)} genes are missing from the "
                f"AnnData (first: {missing[:5]}); pass data with the genes the model was trained on"
            )
        return take_columns(X, adata.var_names.get_indexer(self.var_names))

    @torch.no_grad()
    def get_latent(
        self,
        adata: AnnData,
        *,
        layer: str | None = "counts",
        batch_size: int = 1024,
        return_scale: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Posterior means of z (and standard deviations) for every cell.

        Parameters
        ----------
        adata
            Cells with raw counts in ``layers[layer]`` (or ``X``) over the model's genes.
        layer
            Layer holding the counts.
        batch_size
            Cells encoded at once.
        return_scale
            Also return the posterior standard deviations.

        Returns
        -------
        numpy.ndarray or tuple
            ``(cells, n_latent)`` means, and the standard deviations when asked.
        """
        X = self.aligned_counts(adata, layer)
        loc, scale = encode(self.module, X, batch_size)
        # The module runs in float32 (as it always did here: the counts are float32), and
        # float32 -> float64 -> float32 returns its numbers exactly.
        loc, scale = loc.astype(np.float32), scale.astype(np.float32)
        return (loc, scale) if return_scale else loc

    def save(self, path: str | os.PathLike) -> None:
        """Write the state dict and settings to one file, atomically (torch.save)."""
        payload = {
            "model_config": self.module.config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "state_dict": {k: v.cpu() for k, v in self.module.state_dict().items()},
            "var_names": self.var_names,
            "history": self.history.to_dict(orient="list"),
            "summary": self.summary,
            "split": self.split.tolist(),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            # Through a Python file object: a full disk is then an OSError (named by
            # atomic_path), where torch.save(path) raises an opaque RuntimeError.
            torch.save(payload, handle)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu") -> SCVAE:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            The ``model.pt`` file.
        device
            Where to put the parameters.

        Returns
        -------
        SCVAE
            The model, in evaluation mode.
        """
        path = Path(path)
        try:
            payload = torch.load(path, map_location=device, weights_only=False)
        except FileNotFoundError:
            raise InputError(f"{path}: model file does not exist") from None
        except Exception as err:
            raise InputError(f"{path}: not a readable scvae model file ({err})") from err
        module = VAE(VAEConfig(**payload["model_config"]))
        module.load_state_dict(payload["state_dict"])
        module.to(device).eval()
        return cls(
            module,
            TrainConfig(**payload["train_config"]),
            payload["var_names"],
            pd.DataFrame(payload["history"]),
            payload["summary"],
            np.asarray(payload.get("split", []), dtype=object),
        )
