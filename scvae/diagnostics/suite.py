"""The AnnData edge of the diagnostics: :func:`diagnose` a fitted model on its cells.

:func:`diagnose` is the only place that touches :class:`~scvae.model.SCVAE` and
AnnData: it encodes the cells once, runs every measure of the functional core on all
cells and on the held-out validation cells, and assembles one record.
:func:`write_diagnostics` and :func:`read_diagnostics` store the record as JSON; the
workflow's ``diagnose`` stage is :func:`scvae.stages.diagnose.run_diagnose`.

The measures (one module each):

- :func:`scvae.diagnostics.kl.kl_per_dim`, :func:`scvae.diagnostics.kl.active_units`;
- :func:`scvae.diagnostics.mi.mutual_information`;
- :func:`scvae.diagnostics.iwae.iwae_log_likelihood`;
- :func:`scvae.diagnostics.jacobian.decoder_jacobian`;
- :func:`scvae.diagnostics.dispersion.dispersion_stats`;
- :func:`scvae.diagnostics.batch.batch_in_latent` (when the cells have a batch);
- :func:`scvae.diagnostics.verdicts.verdict`.

A conditional model (one trained with a batch or covariates) is evaluated at each
cell's own covariates: the encoding, the IWAE and the decoder Jacobian read the codes
of ``adata.obs``.

Every random draw comes from its own stream derived from ``seed``, so changing one
measure's settings does not change the draws of another; noise is drawn on the CPU, so
results do not depend on the device.

The diagnostics dictionary (JSON contract)
------------------------------------------
:func:`diagnose` returns plain Python values only (floats, ints, strs, bools, lists and
dicts of them). A number that is undefined is ``float("nan")``, never ``None``, so the
dictionary can be stored as-is under ``adata.uns["scvae"]["diagnostics"]`` in an h5ad
file. :func:`write_diagnostics` writes strict JSON, where NaN becomes ``null``;
:func:`read_diagnostics` turns ``null`` back into NaN. Keys of one block:

``verdict``, ``verdict_reason``
    ``"healthy"``, ``"partial collapse"`` or ``"collapsed"`` and why
    (:func:`~scvae.diagnostics.verdicts.verdict`).
``n_cells``
    Cells in the block.
``kl_per_dim``, ``kl_total``
    Mean KL per dimension over the block's cells and its sum (nats).
``kl_mean``, ``kl_aggregate``, ``mi``, ``mi_stderr``, ``mi_cap``, ``n_eval``,
``n_mi_samples``, ``mi_per_dim``, ``kl_aggregate_per_dim``
    :func:`~scvae.diagnostics.mi.mutual_information` on (up to ``n_mi``
    of) the block's cells; ``kl_mean = mi + kl_aggregate``; ``mi <= mi_cap = log(n_eval)``.
``au_variance``, ``active_units``, ``active_mask``
    ``Var_x E_q[z_d]`` per dimension, the number above ``au_threshold`` and the mask.
``jtj_eigenvalues``, ``sensitivity_per_dim``, ``kl_sensitivity_spearman``,
``n_jacobian_cells``
    :func:`~scvae.diagnostics.jacobian.decoder_jacobian` on a sample of the block's cells.
``iwae_ll_per_cell``, ``iwae_ll_per_count``, ``elbo``, ``recon``, ``elbo_kl``,
``iwae_k``, ``n_iwae_cells``, ``iwae_cells``
    :func:`~scvae.diagnostics.iwae.iwae_log_likelihood` on the validation cells when
    there are any, else on all cells (``iwae_cells`` says which); the same numbers in
    both blocks.
``dispersion``
    :func:`~scvae.diagnostics.dispersion.dispersion_stats` (``{}`` for a Poisson likelihood).
``batch_in_z``
    Only at the top level, and only when the cells have a batch:
    :func:`~scvae.diagnostics.batch.batch_in_latent` on the posterior means of all
    cells (``accuracy``, ``chance``, ``n_batches``, ...) plus ``batch_key``, for
    conditional and unconditional models alike; the top-level ``verdict_reason`` then
    ends with it (the verdict itself does not use it).

The top level is the block of all cells plus ``n_genes``, ``n_latent``,
``n_validation_cells``, ``settings`` (the diagnostic settings, the thresholds and the
model's architecture) and ``validation`` (the block of the held-out validation cells,
``{}`` when the model has none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from scvae.data.covariates import recorded_covariates
from scvae.data.loaders import counts_layer
from scvae.data.ondisk import row_sums, take_rows
from scvae.diagnostics.batch import batch_in_latent
from scvae.diagnostics.dispersion import dispersion_stats
from scvae.diagnostics.iwae import iwae_log_likelihood
from scvae.diagnostics.jacobian import decoder_jacobian
from scvae.diagnostics.kl import kl_per_dim, posterior_mean_variance
from scvae.diagnostics.mi import mutual_information
from scvae.diagnostics.verdicts import VerdictThresholds, verdict
from scvae.errors import InputError
from scvae.module.encoding import encode
from scvae.utils.jsonio import read_json, write_json

if TYPE_CHECKING:
    from anndata import AnnData

    from scvae.model import SCVAE
    from scvae.module.vae import VAE

__all__ = ["FIGURE_NAMES", "diagnose", "read_diagnostics", "write_diagnostics"]

log = logging.getLogger(__name__)

FIGURE_NAMES = ("kl_per_dim", "sensitivity_vs_kl", "jtj_spectrum")
"""Figures the ``diagnose`` stage writes, as ``<name>.png`` in the figure folder."""

# Independent random streams of diagnose(), so that changing one measure's settings does
# not change the draws of another.
_STREAM_MI, _STREAM_JAC, _STREAM_IWAE, _STREAM_MI_VAL, _STREAM_JAC_VAL, _STREAM_IWAE_CELLS = range(
    6
)


def _stream_seed(seed: int, stream: int) -> int:
    """Seed of an independent stream derived from a user seed."""
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


def _builtin(obj: Any) -> Any:
    """numpy/torch values -> plain Python values (NaN kept), recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _builtin(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return [_builtin(v) for v in obj.tolist()]
    if isinstance(obj, list | tuple):
        return [_builtin(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj)
    return obj


def _verdict_thresholds(
    thresholds: VerdictThresholds | Mapping[str, float] | None,
) -> VerdictThresholds:
    """The thresholds given, or a :class:`VerdictThresholds` of the mapping's fields."""
    if isinstance(thresholds, VerdictThresholds):
        return thresholds
    given = dict(thresholds or {})
    unknown = sorted(set(given) - set(VerdictThresholds.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown verdict threshold(s) {unknown}; expected some of "
            f"{sorted(VerdictThresholds.__dataclass_fields__)}"
        )
    return VerdictThresholds(**given)


def _validation_rows(split: np.ndarray, n: int) -> np.ndarray:
    """Rows of the held-out validation cells; none when the split does not fit the data."""
    split = np.asarray(split, dtype=object)
    if split.size == n:
        return np.flatnonzero(split == "validation")
    if split.size:
        log.warning(
            "the model's train/validation split has %d cells but the data %d; "
            "no validation diagnostics",
            split.size,
            n,
        )
    return np.array([], dtype=int)


def _iwae_rows(val_rows: np.ndarray, n: int, n_iwae: int | None, seed: int) -> np.ndarray:
    """Cells of the IWAE: the validation cells (else all), at most ``n_iwae`` of them."""
    rows = val_rows if len(val_rows) else np.arange(n)
    if n_iwae is not None and len(rows) > n_iwae:
        g = torch.Generator().manual_seed(_stream_seed(seed, _STREAM_IWAE_CELLS))
        rows = np.sort(rows[torch.randperm(len(rows), generator=g)[:n_iwae]])
    return rows


def _likelihood_measures(
    module: VAE,
    X: sp.csr_matrix,
    rows: np.ndarray,
    *,
    cells: str,
    k_iwae: int,
    batch_size: int,
    seed: int,
    codes: np.ndarray | None = None,
) -> dict[str, Any]:
    """The IWAE log-likelihood of the cells ``rows`` and the dispersion: shared by the blocks."""
    iwae = iwae_log_likelihood(
        module,
        take_rows(X, rows),
        k=k_iwae,
        batch_size=min(batch_size, 128),
        generator=_stream_seed(seed, _STREAM_IWAE),
        covariates=None if codes is None else codes[rows],
    )
    return {
        "iwae_ll_per_cell": iwae["iwae_ll_per_cell"],
        "iwae_ll_per_count": iwae["iwae_ll_per_count"],
        "elbo": iwae["elbo"],
        "recon": iwae["recon"],
        "elbo_kl": iwae["kl"],
        "iwae_k": iwae["k"],
        "n_iwae_cells": iwae["n_cells"],
        "iwae_cells": cells,
        "dispersion": dispersion_stats(module),
    }


def _cell_set_measures(
    module: VAE,
    X: sp.csr_matrix,
    rows: np.ndarray,
    loc: np.ndarray,
    scale: np.ndarray,
    *,
    n_mi: int,
    n_jacobian: int,
    au_threshold: float,
    thresholds: VerdictThresholds,
    mi_seed: int,
    jac_seed: int,
    codes: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every per-cell-set measure on the cells ``rows``, and their verdict."""
    loc, scale = loc[rows], scale[rows]
    kl = kl_per_dim(loc, scale)
    au_var = posterior_mean_variance(loc)
    au_mask = au_var > au_threshold
    mi = mutual_information(loc, scale, n_eval=n_mi, generator=mi_seed)
    library = np.asarray(row_sums(X, rows), np.float64)
    x_rows = take_rows(X, rows) if module.config.skip != "none" else None
    jac = decoder_jacobian(
        module,
        loc,
        library,
        x_rows,
        n_cells=n_jacobian,
        kl=kl,
        generator=jac_seed,
        covariates=None if codes is None else codes[rows],
    )
    label, reason = verdict(
        mi=mi["mi"],
        kl_per_dim=kl,
        active_mask=au_mask,
        sensitivity_per_dim=jac["sensitivity_per_dim"],
        mi_per_dim=mi["mi_per_dim"],
        mi_cap=mi["mi_cap"],
        thresholds=thresholds,
    )
    return {
        "verdict": label,
        "verdict_reason": reason,
        "n_cells": len(rows),
        "kl_per_dim": kl,
        "kl_total": float(kl.sum()),
        **_mi_record(mi),
        "au_variance": au_var,
        "active_units": int(au_mask.sum()),
        "active_mask": au_mask,
        "jtj_eigenvalues": jac["jtj_eigenvalues"],
        "sensitivity_per_dim": jac["sensitivity_per_dim"],
        "kl_sensitivity_spearman": jac["kl_sensitivity_spearman"],
        "n_jacobian_cells": jac["n_cells"],
    }


def _mi_record(mi: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a block that :func:`mutual_information` fills, in the record's order."""
    return {
        "kl_mean": mi["kl_mean"],
        "kl_aggregate": mi["kl_aggregate"],
        "mi": mi["mi"],
        "mi_stderr": mi["mi_stderr"],
        "mi_cap": mi["mi_cap"],
        "n_eval": mi["n_eval"],
        "n_mi_samples": mi["n_samples"],
        "mi_per_dim": mi["mi_per_dim"],
        "kl_aggregate_per_dim": mi["kl_aggregate_per_dim"],
    }


def _settings(
    module: VAE,
    adata: AnnData,
    *,
    layer: str | None,
    k_iwae: int,
    n_mi: int,
    n_jacobian: int,
    n_iwae_cells: int,
    au_threshold: float,
    batch_size: int,
    seed: int,
    thresholds: VerdictThresholds,
) -> dict[str, Any]:
    """The ``settings`` of the record: what was asked, the thresholds and the architecture."""
    return {
        "layer": counts_layer(adata, layer) or "X",
        "k_iwae": int(k_iwae),
        "n_mi": int(n_mi),
        "n_jacobian": int(n_jacobian),
        "n_iwae": int(n_iwae_cells),
        "au_threshold": float(au_threshold),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "thresholds": asdict(thresholds),
        "model": module.config.to_dict(),
    }


def diagnose(
    model: SCVAE,
    adata: AnnData,
    *,
    layer: str | None = "counts",
    k_iwae: int = 100,
    n_mi: int = 10_000,
    n_jacobian: int = 500,
    n_iwae: int | None = None,
    au_threshold: float = 0.01,
    thresholds: VerdictThresholds | Mapping[str, float] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    batch_key: str | None = None,
) -> dict[str, Any]:
    """All collapse diagnostics of a fitted model on the cells of ``adata``.

    Every measure is computed on all cells and again on the held-out validation cells
    of the training split (``model.split == "validation"``, which must be aligned with
    the rows of ``adata``; when the lengths differ the validation block is left empty
    with a warning). The IWAE log-likelihood is computed once, on the validation cells
    when there are any (held-out likelihood), else on all cells.

    Parameters
    ----------
    model
        The fitted model.
    adata
        The cells, with raw counts in ``layers[layer]`` (or ``X``) over the model's genes.
    layer
        Layer with the counts.
    k_iwae
        Importance samples of the IWAE bound.
    n_mi
        Cells of the aggregate posterior of the MI estimate (caps it at ``log n_mi``).
    n_jacobian
        Cells at which the decoder Jacobian is evaluated.
    n_iwae
        At most this many cells for the IWAE (a random subset; None: all of them).
    au_threshold
        Variance of the posterior means above which a dimension is active.
    thresholds
        Verdict thresholds (a :class:`VerdictThresholds` or a mapping of its fields).
    batch_size
        Cells per forward pass.
    seed
        Seed of every random draw; the same seed gives the same numbers.
    batch_key
        obs column of the cells' batch for ``batch_in_z`` (None: the model's batch
        column, else the one the preprocessing recorded in
        ``uns["scvae"]["preprocess"]``; no ``batch_in_z`` without one).

    Returns
    -------
    dict
        Plain Python values, described in the module docstring.

    Raises
    ------
    InputError
        When a conditional model's covariate column is missing from ``adata.obs`` or
        holds a category the model does not know.
    """
    thresholds = _verdict_thresholds(thresholds)
    module = model.module
    X = model.aligned_counts(adata, layer)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"diagnose needs at least 2 cells, got {n}")
    codes = model.covariate_codes(adata)
    loc, scale = encode(module, X, batch_size, covariates=codes)

    val_rows = _validation_rows(model.split, n)
    iwae_rows = _iwae_rows(val_rows, n, n_iwae, seed)
    shared = _likelihood_measures(
        module,
        X,
        iwae_rows,
        cells="validation" if len(val_rows) else "all",
        k_iwae=k_iwae,
        batch_size=batch_size,
        seed=seed,
        codes=codes,
    )

    # Each cell set draws from its own streams; both carry the shared likelihood measures.
    def cell_set(rows: np.ndarray, mi_stream: int, jac_stream: int) -> dict[str, Any]:
        block = _cell_set_measures(
            module,
            X,
            rows,
            loc,
            scale,
            n_mi=n_mi,
            n_jacobian=n_jacobian,
            au_threshold=au_threshold,
            thresholds=thresholds,
            mi_seed=_stream_seed(seed, mi_stream),
            jac_seed=_stream_seed(seed, jac_stream),
            codes=codes,
        )
        block.update(shared)
        return block

    out = cell_set(np.arange(n), _STREAM_MI, _STREAM_JAC)
    out.update(
        {
            "n_genes": int(X.shape[1]),
            "n_latent": int(module.n_latent),
            "n_validation_cells": len(val_rows),
            "settings": _settings(
                module,
                adata,
                layer=layer,
                k_iwae=k_iwae,
                n_mi=n_mi,
                n_jacobian=n_jacobian,
                n_iwae_cells=len(iwae_rows),
                au_threshold=au_threshold,
                batch_size=batch_size,
                seed=seed,
                thresholds=thresholds,
            ),
            "validation": {},
        }
    )
    if len(val_rows) >= 2:
        out["validation"] = cell_set(val_rows, _STREAM_MI_VAL, _STREAM_JAC_VAL)
    key = batch_key or model.batch_key or recorded_covariates(adata)[0]
    if key is not None:
        if key not in adata.obs.columns:
            raise InputError(
                f"no obs column {key!r} holds the batch (the columns are {list(adata.obs.columns)})"
            )
        out["batch_in_z"] = {
            "batch_key": key,
            **batch_in_latent(loc, adata.obs[key].to_numpy(), seed=seed),
        }
        out["verdict_reason"] += _batch_sentence(out["batch_in_z"])
    return _builtin(out)


def _batch_sentence(b: Mapping[str, Any]) -> str:
    """The end of the verdict's reason that says how much batch information z holds."""
    return (
        f" The batch ({b['batch_key']!r}, {b['n_batches']} batches) is read from z by a "
        f"{b['n_neighbors']}-NN classifier with accuracy {b['accuracy']:.3g} "
        f"(chance {b['chance']:.3g})."
    )


def write_diagnostics(diagnostics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write diagnostics as strict JSON, atomically; NaN and infinities become ``null``.

    Parameters
    ----------
    diagnostics
        The dictionary of :func:`diagnose`.
    path
        Destination ``.json``.
    """
    write_json(_builtin(diagnostics), path)


def read_diagnostics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file of :func:`write_diagnostics`, turning ``null`` back into NaN.

    Parameters
    ----------
    path
        The ``.json`` file.

    Returns
    -------
    dict
        The diagnostics, as :func:`diagnose` returned them.
    """
    return read_json(path)
