"""The model object: a count VAE on an AnnData, from a preset, trained, used and saved."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvae.data.covariates import covariate_categories, covariate_codes, recorded_covariates
from scvae.data.loaders import CountBatches, counts_matrix
from scvae.data.ondisk import take_columns
from scvae.errors import InputError
from scvae.module.config import DATA_FIELDS, VAEConfig
from scvae.module.encoding import encode, eval_mode
from scvae.module.vae import VAE
from scvae.presets import DEFAULT_PRESET, preset_overrides
from scvae.training.loop import fit
from scvae.training.settings import TRAIN_KEYS, TrainConfig, default_settings, split_settings
from scvae.utils.torchfile import convert_legacy_file, load_tensor_file, save_tensor_file

log = logging.getLogger(__name__)

MODEL_KIND = "model"
"""The kind of a model file (:func:`scvae.utils.torchfile.save_tensor_file`)."""


SETUP_KEY = "setup"
"""Where :meth:`SCVAE.setup_anndata` records the data fields: ``uns["scvae"]["setup"]``."""


def _data_fields(
    adata: AnnData | None,
    layer: str | None,
    batch_key: str | None,
    covariate_keys: tuple[str, ...] | list[str] | None,
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """Counts layer, batch and covariates: as given, else registered, else recorded."""
    uns = adata.uns.get("scvae", {}) if adata is not None else {}
    registered = uns.get(SETUP_KEY)
    if registered is not None:
        # An h5ad round trip gives numpy strings and arrays.
        default_layer = str(registered["layer"]) if "layer" in registered else None
        default_batch = str(registered["batch_key"]) if "batch_key" in registered else None
        default_covariates = [str(k) for k in registered.get("covariate_keys", [])]
    elif adata is not None:
        default_layer = "counts"
        default_batch, default_covariates = recorded_covariates(adata)
    else:
        default_layer, default_batch, default_covariates = "counts", None, []
    if layer is None:
        layer = default_layer
    if batch_key is None and covariate_keys is None:
        batch_key, covariate_keys = default_batch, default_covariates
    return layer, batch_key, tuple(covariate_keys or ())


class SCVAE:
    """A count VAE on an AnnData, built from a preset, as scvi-tools' models are.

    ``SCVAE.setup_anndata(adata, ...)`` registers where the counts, the batch and the
    covariates are (or give them here), ``SCVAE(adata)`` builds the model with the
    ``recommended`` settings (another preset, or settings, by keyword), ``train()`` fits
    it; then :meth:`get_latent`, :meth:`get_normalized_expression`, :meth:`diagnose`,
    :meth:`map_query`, :meth:`save` and :meth:`load`.

    Parameters
    ----------
    adata
        Cells x genes with raw integer counts. None only for a model that is loaded
        (:meth:`load`).
    preset
        Name of a preset of :data:`scvae.presets.PRESETS` (``recommended`` by default;
        ``vanilla`` is the package defaults); on data with a batch its batch-aware form
        (:data:`scvae.presets.WITH_BATCHES`) applies. None: the package defaults.
    layer, batch_key, covariate_keys
        Where the counts, the batch and other categorical covariates are
        (:meth:`setup_anndata`); None takes what :meth:`setup_anndata` registered on
        ``adata``, else what the workflow's preprocessing recorded, else
        ``layers["counts"]`` (or ``X``) and no batch.
    **settings
        Model settings (:class:`~scvae.module.VAEConfig`) and training settings
        (:class:`~scvae.training.settings.TrainConfig`) that replace the preset's.

    Attributes
    ----------
    module
        The network (Pyro model and guide); None until the model is trained.
    settings
        Every model and training setting, flat.
    train_config
        The training settings.
    var_names
        Genes, in the order the model expects them.
    history
        Per-epoch losses (empty until trained).
    summary
        Final losses, epochs run, timings (empty until trained).
    split
        ``"train"`` or ``"validation"`` for each training cell, in the training order.
    batch_key
        The obs column of the batch (None: none). Kept when the model is not
        conditioned on it (``condition_on_batch=False``), for the diagnostics.
    covariate_keys
        The obs columns of the other covariates.
    categories
        Column -> categories of every covariate the model is conditioned on, the batch
        first (empty for an unconditional model); a cell's codes are the positions of
        its values there.

    Raises
    ------
    ValueError
        If a setting is unknown, of the wrong type or out of range, or the preset is
        unknown (the message names it).

    Examples
    --------
    >>> import scvae
    >>> scvae.SCVAE.setup_anndata(adata, layer="counts", batch_key="donor")  # doctest: +SKIP
    >>> model = scvae.SCVAE(adata)  # doctest: +SKIP
    >>> model.train()  # doctest: +SKIP
    >>> adata.obsm["X_scvae"] = model.get_latent()  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: AnnData | None = None,
        *,
        preset: str | None = DEFAULT_PRESET,
        layer: str | None = None,
        batch_key: str | None = None,
        covariate_keys: tuple[str, ...] | list[str] | None = None,
        **settings,
    ) -> None:
        if adata is not None and not isinstance(adata, AnnData):
            raise TypeError(
                f"SCVAE(adata, ...) takes an AnnData, not {type(adata).__name__}: a trained "
                "model comes from SCVAE(adata).train(), scvae.train(adata) or SCVAE.load(path)"
            )
        fields = _data_fields(adata, layer, batch_key, covariate_keys)
        self.adata = adata
        self.layer, self.batch_key, self.covariate_keys = fields
        self.preset = preset
        base = preset_overrides(preset, batches=self.batch_key is not None) if preset else {}
        self.settings = {**default_settings(), **base, **settings}
        n_input = adata.n_vars if adata is not None else 1
        # Checked now, so that a typo fails before any training (the message names the key).
        _, self.train_config = split_settings(self.settings, n_input)
        self.var_names = list(map(str, adata.var_names)) if adata is not None else []
        self.module: VAE | None = None
        self.history = pd.DataFrame()
        self.summary: dict = {}
        self.split = np.asarray([], dtype=object)
        self.categories: dict[str, list[str]] = {}

    @staticmethod
    def setup_anndata(
        adata: AnnData,
        *,
        layer: str | None = "counts",
        batch_key: str | None = None,
        covariate_keys: tuple[str, ...] | list[str] = (),
    ) -> None:
        """Register where ``adata`` keeps the counts, the batch and the covariates.

        As scvi-tools' ``setup_anndata``: called once, it lets :class:`SCVAE` and its
        methods find the fields without asking again. The columns are checked now.

        Parameters
        ----------
        adata
            Cells x genes.
        layer
            Layer with the raw counts (``X`` when it is absent or None).
        batch_key
            obs column of each cell's batch (sample, plate, donor, ...); None: none.
        covariate_keys
            obs columns of other categorical covariates.

        Returns
        -------
        None
            Writes ``adata.uns["scvae"]["setup"]`` (``layer``, ``batch_key``,
            ``covariate_keys``; a key that is None is left out, as h5ad cannot store it).

        Raises
        ------
        InputError
            If the layer or a column is missing, a column is given twice or has empty
            values.
        """
        if layer is not None and layer not in adata.layers and layer != "counts":
            raise InputError(
                f"AnnData: no layer {layer!r} (the layers are {list(adata.layers)}); None uses X"
            )
        keys = ([batch_key] if batch_key is not None else []) + list(covariate_keys)
        covariate_categories(adata, keys, source="AnnData")
        record = {"covariate_keys": list(covariate_keys)}
        if layer is not None:
            record["layer"] = layer
        if batch_key is not None:
            record["batch_key"] = batch_key
        adata.uns.setdefault("scvae", {})[SETUP_KEY] = record

    @property
    def is_trained(self) -> bool:
        """Whether the model has been trained (or loaded)."""
        return self.module is not None

    def __repr__(self) -> str:
        where = f"{len(self.var_names)} genes"
        if self.adata is not None:
            where = f"{self.adata.n_obs} cells x {where}"
        epochs = self.summary.get("epochs", "?")
        state = f"trained, {epochs} epochs" if self.is_trained else "not trained"
        preset = f"preset={self.preset!r}, " if self.preset else ""
        batch = f", batch_key={self.batch_key!r}" if self.batch_key else ""
        return f"SCVAE({preset}{where}, n_latent={self.settings['n_latent']}{batch}; {state})"

    def train(
        self,
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool | None = None,
        source: str | None = None,
        **train_settings,
    ) -> None:
        """Fit the model to the AnnData it was built on.

        Parameters
        ----------
        checkpoint_dir
            Where to keep ``checkpoint.pt``; a rerun with the same settings resumes from it.
        progress
            Show a progress bar (None: only on a terminal).
        source
            What the data came from (a file name), for error messages.
        **train_settings
            Training settings (:class:`~scvae.training.settings.TrainConfig`, e.g.
            ``max_epochs``) that replace the model's for this training.

        Raises
        ------
        ValueError
            If a key is not a training setting (model settings are given to
            :class:`SCVAE`), or a value is of the wrong type or out of range.
        InputError
            If the counts are not raw counts or a covariate column is unusable.
        TrainingError
            If the loss becomes NaN or infinite.
        """
        if self.adata is None:
            raise ValueError("this model has no AnnData to train on; build it with SCVAE(adata)")
        not_training = sorted(set(train_settings) - TRAIN_KEYS)
        if not_training:
            raise ValueError(
                f"train() takes training settings only; {not_training} are model settings "
                f"(give them to SCVAE(adata, ...)); training settings are {sorted(TRAIN_KEYS)}"
            )
        self.settings = {**self.settings, **train_settings}
        result = fit(
            self.adata,
            self.settings,
            batch_key=self.batch_key,
            covariate_keys=self.covariate_keys,
            layer=self.layer,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
            source=source,
        )
        self._set_trained(
            result.module,
            result.train_config,
            result.history,
            result.summary,
            result.split,
            result.categories,
        )

    @classmethod
    def from_module(
        cls,
        module: VAE,
        train_config: TrainConfig,
        var_names: list[str],
        history: pd.DataFrame | None = None,
        summary: dict | None = None,
        split: np.ndarray | list[str] | None = None,
        *,
        layer: str | None = "counts",
        batch_key: str | None = None,
        covariate_keys: tuple[str, ...] | list[str] = (),
        categories: dict[str, list[str]] | None = None,
        preset: str | None = None,
    ) -> SCVAE:
        """A trained model from its network and the record of its training.

        Parameters
        ----------
        module
            The trained network.
        train_config
            The settings it was trained with.
        var_names
            Genes, in the order the model expects them.
        history, summary, split
            Per-epoch losses, final losses and timings, each training cell's split.
        layer, batch_key, covariate_keys
            Where the counts, the batch and the covariates are in the data it reads.
        categories
            Column -> categories of every covariate the module is conditioned on (the
            batch first).
        preset
            The preset it was built from, for the record.

        Returns
        -------
        SCVAE
            The model, holding no AnnData.

        Raises
        ------
        ValueError
            If the categories do not match the module's covariates.
        """
        model_settings = {k: v for k, v in module.config.to_dict().items() if k not in DATA_FIELDS}
        model = cls(
            None,
            preset=preset,
            layer=layer,
            batch_key=batch_key,
            covariate_keys=tuple(covariate_keys),
            **{**model_settings, **train_config.to_dict()},
        )
        model.var_names = list(map(str, var_names))
        model._set_trained(
            module,
            train_config,
            history if history is not None else pd.DataFrame(),
            summary or {},
            np.asarray(split if split is not None else [], dtype=object),
            categories,
        )
        return model

    def _set_trained(
        self,
        module: VAE,
        train_config: TrainConfig,
        history: pd.DataFrame,
        summary: dict,
        split: np.ndarray,
        categories: dict[str, list[str]] | None,
    ) -> None:
        """Hold a trained network and the record of its training."""
        self.module = module
        self.train_config = train_config
        self.history = history
        self.summary = summary or {}
        self.split = np.asarray(split, dtype=object)
        self.categories = {k: list(v) for k, v in (categories or {}).items()}
        n_categories = tuple(len(v) for v in self.categories.values())
        if n_categories != module.config.n_categories:
            raise ValueError(
                f"categories {n_categories} do not match the module's {module.config.n_categories}"
            )

    def _trained_module(self) -> VAE:
        """The network; an error says how to get one when the model is not trained."""
        if self.module is None:
            raise ValueError("the model is not trained yet: call model.train() first")
        return self.module

    def _data(self, adata: AnnData | None) -> AnnData:
        """The AnnData to read: the one given, else the one the model was built on."""
        if adata is not None:
            return adata
        if self.adata is None:
            raise ValueError("pass an AnnData: this model was loaded and holds none")
        return self.adata

    def diagnose(self, adata: AnnData | None = None, **kwargs) -> dict:
        """Collapse diagnostics and the verdict (:func:`scvae.diagnostics.diagnose`).

        Parameters
        ----------
        adata
            Cells over the model's genes; None: the AnnData the model was built on.
        **kwargs
            Options of :func:`scvae.diagnostics.diagnose` (``k_iwae``, ``n_mi``, ...).

        Returns
        -------
        dict
            The diagnostics, with ``verdict`` (``healthy``, ``partial collapse`` or
            ``collapsed``).
        """
        # The diagnostics sit above the model (they take one), so they load on use.
        from scvae.diagnostics.suite import diagnose

        return diagnose(self, self._data(adata), **kwargs)

    def map_query(self, query: AnnData, **kwargs) -> tuple[AnnData, SCVAE, dict]:
        """Put new cells into this model's latent space (:func:`scvae.mapping.map_query`).

        No retraining: the query is encoded with this model; new batches get their own
        parameters fitted with everything else frozen (scArches-style).

        Parameters
        ----------
        query
            New cells with raw counts over (at least) the model's genes.
        **kwargs
            Options of :func:`scvae.mapping.map_query`: ``reference`` (cells with codes
            in ``obsm["X_scvae"]`` and labels, for the label transfer), ``label_key``,
            ``batch_key``, ``n_neighbors``, ``epochs``, ``seed``.

        Returns
        -------
        tuple
            ``(mapped, model, record)``: the query with its codes in
            ``obsm["X_scvae"]`` (and transferred labels with their uncertainty in
            ``obs`` when a reference is given), the model used (extended when the query
            brought new batches), and what was done.
        """
        # Mapping sits above the model (it fine-tunes a copy of it), so it loads on use.
        from scvae.mapping import map_query

        return map_query(self, query, **kwargs)

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
        return next(self._trained_module().parameters()).device

    def aligned_counts(self, adata: AnnData, layer: str | None = None) -> sp.csr_matrix:
        """Counts of ``adata`` with the model's genes in the model's order.

        ``layer`` None reads the model's counts layer (:meth:`setup_anndata`).
        """
        X = counts_matrix(adata, self.layer if layer is None else layer)
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
        adata: AnnData | None = None,
        *,
        layer: str | None = None,
        batch_size: int = 1024,
        return_scale: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Posterior means of z (and standard deviations) for every cell.

        Parameters
        ----------
        adata
            Cells with raw counts in ``layers[layer]`` (or ``X``) over the model's genes;
            None: the AnnData the model was built on.
        layer
            Layer holding the counts; None: the model's (:meth:`setup_anndata`).
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
        adata = self._data(adata)
        X = self.aligned_counts(adata, layer)
        codes = self.covariate_codes(adata)
        loc, scale = encode(self._trained_module(), X, batch_size, covariates=codes)
        # The module runs in float32 (as it always did here: the counts are float32), and
        # float32 -> float64 -> float32 returns its numbers exactly.
        loc, scale = loc.astype(np.float32), scale.astype(np.float32)
        return (loc, scale) if return_scale else loc

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        *,
        layer: str | None = None,
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
            conditional model); None: the AnnData the model was built on.
        layer
            Layer holding the counts; None: the model's (:meth:`setup_anndata`).
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
        module = self._trained_module()
        adata = self._data(adata)
        X = self.aligned_counts(adata, layer)
        codes = self.covariate_codes(adata)
        decoded = codes
        if transform_batch is not None:
            if not module.config.n_batch:
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
        dtype = next(module.parameters()).dtype
        # The encoder reads each cell's own covariates, the decoder the chosen ones.
        own = CountBatches(X, np.arange(X.shape[0]), batch_size, covariates=codes)
        chosen = CountBatches(X, np.arange(X.shape[0]), batch_size, covariates=decoded)
        with eval_mode(module):
            for rows in own.batches():
                x = own.dense(rows, device).to(dtype)
                z = module.inference(x, own.codes(rows, device))["qz"].loc
                ones = torch.ones(x.shape[0], 1, dtype=dtype, device=device)
                log_rho = module.generative(z, ones, x, chosen.codes(rows, device))["log_mu"]
                scale = module.library(x) if observed else float(library_size)
                out[rows] = (log_rho.exp() * scale).cpu().numpy()
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and settings to one file, atomically, in a file safe to open.

        The file holds the state dict as tensors and everything else as JSON
        (:func:`scvae.utils.torchfile.save_tensor_file`): :meth:`load` reads it with
        ``torch.load(weights_only=True)``, so opening a model file from someone else
        runs no code.
        """
        module = self._trained_module()
        metadata = {
            "preset": self.preset,
            "model_config": module.config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "var_names": self.var_names,
            "history": self.history.to_dict(orient="list"),
            "summary": self.summary,
            "split": self.split.tolist(),
            "layer": self.layer,
            "batch_key": self.batch_key,
            "covariate_keys": list(self.covariate_keys),
            "categories": self.categories,
        }
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
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
            model = cls.from_module(
                module.to(device).eval(),
                train_config,
                payload["var_names"],
                pd.DataFrame(payload["history"]),
                payload["summary"],
                payload.get("split", []),
                layer=payload.get("layer", "counts"),
                batch_key=payload.get("batch_key"),
                covariate_keys=payload.get("covariate_keys", ()),
                categories=payload.get("categories"),
                preset=payload.get("preset"),
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"{path}: not a usable scvae model file ({err})") from err
        return model

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


def train(
    adata: AnnData,
    *,
    preset: str | None = DEFAULT_PRESET,
    layer: str | None = None,
    batch_key: str | None = None,
    covariate_keys: tuple[str, ...] | list[str] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    source: str | None = None,
    **settings,
) -> SCVAE:
    """Build and train a :class:`SCVAE` in one call: ``recommended`` unless told otherwise.

    The same as ``model = SCVAE(adata, preset=..., ...); model.train(...)``.

    Parameters
    ----------
    adata
        Cells x genes with raw integer counts in ``layers[layer]`` (or ``X``).
    preset
        A preset of :data:`scvae.presets.PRESETS` (its batch-aware form on data with a
        batch); None: the package defaults (the ``vanilla`` model).
    layer, batch_key, covariate_keys
        Where the counts, the batch and the covariates are (:meth:`SCVAE.setup_anndata`).
    checkpoint_dir
        Where to keep ``checkpoint.pt``; a rerun with the same settings resumes from it.
    progress
        Show a progress bar (None: only on a terminal).
    source
        What the data came from (a file name), for error messages.
    **settings
        Model and training settings that replace the preset's.

    Returns
    -------
    SCVAE
        The trained model.

    Raises
    ------
    ValueError
        If a setting or the preset is unknown, or a value is of the wrong type or out of
        range (the message names it).
    InputError
        If the counts are not raw counts, or a batch or covariate column is unusable.
    TrainingError
        If the loss becomes NaN or infinite; the last good checkpoint is kept.

    Examples
    --------
    >>> import scvae
    >>> model = scvae.train(adata)  # doctest: +SKIP
    >>> adata.obsm["X_scvae"] = model.get_latent()  # doctest: +SKIP
    """
    model = SCVAE(
        adata,
        preset=preset,
        layer=layer,
        batch_key=batch_key,
        covariate_keys=covariate_keys,
        **settings,
    )
    model.train(checkpoint_dir=checkpoint_dir, progress=progress, source=source)
    return model
