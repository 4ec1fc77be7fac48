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

from scvae.data.loaders import CountBatches, counts_matrix
from scvae.data.ondisk import take_columns
from scvae.errors import InputError
from scvae.module.config import VAEConfig
from scvae.module.encoding import encode, eval_mode
from scvae.module.vae import VAE
from scvae.training.settings import TrainConfig
from scvae.utils.torchfile import convert_legacy_file, load_tensor_file, save_tensor_file

log = logging.getLogger(__name__)

MODEL_KIND = "model"
"""The kind of a model file (:func:`scvae.utils.torchfile.save_tensor_file`)."""


def _obs_values(adata: AnnData, key: str, source: str) -> pd.Series:
    """``adata.obs[key]`` as strings; an error names the columns there are, or the NaNs."""
    if key not in adata.obs.columns:
        raise InputError(
            f"{source}: no obs column {key!r} (the columns are {list(adata.obs.columns)})"
        )
    values = adata.obs[key]
    missing = int(pd.isna(values).sum())
    if missing:
        raise InputError(
            f"{source}: obs column {key!r} has {missing} empty (NaN) value(s) of "
            f"{len(values)}; give every cell a category"
        )
    return values.astype(object).astype(str)


def covariate_categories(
    adata: AnnData, keys: list[str] | tuple[str, ...], *, source: str = "AnnData"
) -> dict[str, list[str]]:
    """The categories of each covariate column of ``adata.obs``, sorted, as strings.

    Parameters
    ----------
    adata
        The cells.
    keys
        obs columns (the batch first).
    source
        What the data came from, for error messages.

    Returns
    -------
    dict
        Column -> its sorted categories; the code of a value is its position there.

    Raises
    ------
    InputError
        When a column is missing (the message lists those there are), repeated, or has
        empty (NaN) values.
    """
    repeated = sorted({k for k in keys if list(keys).count(k) > 1})
    if repeated:
        raise InputError(f"{source}: covariate column(s) {repeated} given twice")
    return {key: sorted(set(_obs_values(adata, key, source))) for key in keys}


def covariate_codes(
    adata: AnnData, categories: dict[str, list[str]], *, source: str = "AnnData"
) -> np.ndarray | None:
    """Integer codes of the cells' covariates under known categories.

    Parameters
    ----------
    adata
        The cells.
    categories
        Column -> categories (:func:`covariate_categories`); empty: no covariates.
    source
        What the data came from, for error messages.

    Returns
    -------
    numpy.ndarray or None
        int64 codes, cells x covariates (columns in the order of ``categories``), or
        None when there are no covariates.

    Raises
    ------
    InputError
        When a column is missing, has NaN values, or holds categories not in
        ``categories`` (the message names them).
    """
    if not categories:
        return None
    codes = np.empty((adata.n_obs, len(categories)), dtype=np.int64)
    for j, (key, cats) in enumerate(categories.items()):
        values = _obs_values(adata, key, source)
        index = pd.Index(cats).get_indexer(values)
        if (index < 0).any():
            unknown = sorted(set(values[index < 0]))
            raise InputError(
                f"{source}: obs column {key!r} holds categories the model was not trained "
                f"on: {unknown[:10]}{' ...' if len(unknown) > 10 else ''} (it knows {cats}); "
                "mapping new batches into a trained model is not supported"
            )
        codes[:, j] = index
    return codes


def recorded_covariates(adata: AnnData) -> tuple[str | None, list[str]]:
    """The batch column and covariate columns the preprocessing stage recorded.

    Parameters
    ----------
    adata
        A preprocessed AnnData (``uns["scvae"]["preprocess"]``).

    Returns
    -------
    tuple
        ``(batch_key, covariate_keys)``: None and ``[]`` when absent.
    """
    pre = adata.uns.get("scvae", {}).get("preprocess", {})
    batch_key = pre.get("batch_key")
    # An h5ad round trip gives numpy strings and arrays.
    batch_key = str(batch_key) if batch_key is not None and str(batch_key) else None
    keys = pre.get("covariate_keys")
    return batch_key, [str(k) for k in (keys if keys is not None else [])]


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
    batch_key
        The obs column of the training data's batch (None: none). Kept when the model is
        not conditioned on it (``condition_on_batch=False``), for the diagnostics.
    covariate_keys
        The obs columns of the training data's other covariates.
    categories
        Column -> categories of every covariate the model is conditioned on, the batch
        first (empty for an unconditional model); a cell's codes are the positions of
        its values there.
    """

    def __init__(
        self,
        module: VAE,
        train_config: TrainConfig,
        var_names: list[str],
        history: pd.DataFrame | None = None,
        summary: dict | None = None,
        split: np.ndarray | None = None,
        *,
        batch_key: str | None = None,
        covariate_keys: tuple[str, ...] | list[str] = (),
        categories: dict[str, list[str]] | None = None,
    ) -> None:
        self.module = module
        self.train_config = train_config
        self.var_names = list(var_names)
        self.history = history if history is not None else pd.DataFrame()
        self.summary = summary or {}
        self.split = np.asarray(split if split is not None else [], dtype=object)
        self.batch_key = batch_key
        self.covariate_keys = tuple(covariate_keys)
        self.categories = {k: list(v) for k, v in (categories or {}).items()}
        n_categories = tuple(len(v) for v in self.categories.values())
        if n_categories != module.config.n_categories:
            raise ValueError(
                f"categories {n_categories} do not match the module's {module.config.n_categories}"
            )

    def covariate_codes(self, adata: AnnData) -> np.ndarray | None:
        """Codes of the cells' covariates (cells x covariates), None for an unconditional model.

        Raises
        ------
        InputError
            When a covariate column is missing or holds a category the model does not know.
        """
        return covariate_codes(adata, self.categories)

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

        Raises
        ------
        InputError
            When genes are missing, or (for a conditional model) a covariate column of
            :attr:`categories` is missing or holds a category the model was not trained on.
        """
        X = self.aligned_counts(adata, layer)
        codes = self.covariate_codes(adata)
        loc, scale = encode(self.module, X, batch_size, covariates=codes)
        # The module runs in float32 (as it always did here: the counts are float32), and
        # float32 -> float64 -> float32 returns its numbers exactly.
        loc, scale = loc.astype(np.float32), scale.astype(np.float32)
        return (loc, scale) if return_scale else loc

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata: AnnData,
        *,
        layer: str | None = "counts",
        library_size: float | str = 1e4,
        transform_batch: str | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Decoded expression: the decoder's mean proportions times a library size.

        For each cell, ``rho = softmax(decoder(z, s))`` at the posterior mean of z (and
        the cell's covariates ``s``): the model's denoised expression profile, summing to
        1 over the genes. It is returned times ``library_size`` (as scVI's
        ``get_normalized_expression``; scVI's default is 1, proportions). A decoder with a
        skip path also reads the cell's counts, as in training.

        Parameters
        ----------
        adata
            Cells with raw counts over the model's genes (and the covariate columns of a
            conditional model).
        layer
            Layer holding the counts.
        library_size
            Counts per cell of the result: a number (1 gives proportions; the default,
            10,000, is the scale of ``normalize_total``), or ``"observed"``: each cell's
            own total count (denoised counts).
        transform_batch
            For a model conditioned on batches: decode every cell as if it came from this
            batch (one of ``categories[batch_key]``), a batch-corrected expression; None
            decodes each cell with its own batch.
        batch_size
            Cells decoded at once.

        Returns
        -------
        numpy.ndarray
            float32, cells x genes (dense: ``n_obs * n_vars`` values).

        Raises
        ------
        InputError
            When genes or covariate columns are missing, ``transform_batch`` is given to
            a model without a batch or is not one of its batches, or ``library_size`` is
            neither a positive number nor ``"observed"``.
        """
        X = self.aligned_counts(adata, layer)
        codes = self.covariate_codes(adata)
        decoded = codes
        if transform_batch is not None:
            if not self.module.config.n_batch:
                raise InputError(
                    f"transform_batch={transform_batch!r}: this model is not conditioned on a batch"
                )
            batches = self.categories[self.batch_key]
            if str(transform_batch) not in batches:
                raise InputError(
                    f"transform_batch={transform_batch!r} is not one of the model's batches "
                    f"{batches}"
                )
            decoded = codes.copy()
            decoded[:, 0] = batches.index(str(transform_batch))
        observed = isinstance(library_size, str)
        if observed and library_size != "observed":
            raise InputError(f"library_size={library_size!r}: a number or 'observed'")
        if not observed and not float(library_size) > 0:
            raise InputError(f"library_size={library_size!r} must be > 0")
        out = np.empty(X.shape, dtype=np.float32)
        device = self.device
        dtype = next(self.module.parameters()).dtype
        # The encoder reads each cell's own covariates, the decoder the chosen ones.
        own = CountBatches(X, np.arange(X.shape[0]), batch_size, covariates=codes)
        chosen = CountBatches(X, np.arange(X.shape[0]), batch_size, covariates=decoded)
        with eval_mode(self.module):
            for rows in own.batches():
                x = own.dense(rows, device).to(dtype)
                z = self.module.inference(x, own.codes(rows, device))["qz"].loc
                ones = torch.ones(x.shape[0], 1, dtype=dtype, device=device)
                log_rho = self.module.generative(z, ones, x, chosen.codes(rows, device))["log_mu"]
                scale = self.module.library(x) if observed else float(library_size)
                out[rows] = (log_rho.exp() * scale).cpu().numpy()
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and settings to one file, atomically, in a file safe to open.

        The file holds the state dict as tensors and everything else as JSON
        (:func:`scvae.utils.torchfile.save_tensor_file`): :meth:`load` reads it with
        ``torch.load(weights_only=True)``, so opening a model file from someone else
        runs no code.
        """
        metadata = {
            "model_config": self.module.config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "var_names": self.var_names,
            "history": self.history.to_dict(orient="list"),
            "summary": self.summary,
            "split": self.split.tolist(),
            "batch_key": self.batch_key,
            "covariate_keys": list(self.covariate_keys),
            "categories": self.categories,
        }
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        save_tensor_file(path, MODEL_KIND, {"state_dict": state}, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu") -> SCVAE:
        """Load a model written by :meth:`save`; no code in the file can run.

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

        Raises
        ------
        InputError
            When the file is missing or not a model file of this format. A file whose
            pickle holds more than tensors and plain values (an old-format model file,
            or a crafted one) is refused unopened (:class:`~scvae.utils.torchfile.UnsafeFileError`),
            with a message on converting (:meth:`convert`) or retraining.
        """
        path = Path(path)
        metadata, tensors = load_tensor_file(path, MODEL_KIND, map_location=device)
        return cls._from_payload({**metadata, "state_dict": tensors["state_dict"]}, path, device)

    @classmethod
    def _from_payload(cls, payload: dict, path: Path, device: str) -> SCVAE:
        """The model of a payload (metadata and ``state_dict``); errors name ``path``."""
        try:
            module = VAE(VAEConfig(**payload["model_config"]))
            module.load_state_dict(payload["state_dict"])
            train_config = TrainConfig(**payload["train_config"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"{path}: not a usable scvae model file ({err})") from err
        module.to(device).eval()
        return cls(
            module,
            train_config,
            payload["var_names"],
            pd.DataFrame(payload["history"]),
            payload["summary"],
            np.asarray(payload.get("split", []), dtype=object),
            batch_key=payload.get("batch_key"),
            covariate_keys=payload.get("covariate_keys", ()),
            categories=payload.get("categories"),
        )

    @classmethod
    def convert(
        cls, path: str | os.PathLike, out: str | os.PathLike, *, i_trust_this_file: bool = False
    ) -> SCVAE:
        """Rewrite a model file of the old format (a full pickle) in the safe format.

        Reading the old format unpickles it, which runs any code the file carries: use
        this once, explicitly, on files you trust (``scvae convert-model OLD NEW
        --i-trust-this-file``); :meth:`load` never does it.

        Parameters
        ----------
        path
            The old ``model.pt``.
        out
            Where to write the converted model.
        i_trust_this_file
            Must be True: your statement that the old file is trusted.

        Returns
        -------
        SCVAE
            The model, also written to ``out``.
        """
        payload = convert_legacy_file(path, out, i_trust_this_file=i_trust_this_file)
        model = cls._from_payload(payload, Path(path), "cpu")
        model.save(out)
        log.info("converted %s to %s", path, out)
        return model
