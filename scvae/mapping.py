"""Mapping new cells into a trained model's latent space without retraining.

:func:`map_query` encodes a query dataset with a trained :class:`~scvae.model.SCVAE`:

- genes are aligned by name (:func:`align_genes`): the model's genes missing from the
  query are filled with zeros and counted in a warning; fewer than half of them present,
  or a query without gene names, is an error;
- where the model is conditioned on batches (or other covariates) and the query brings
  new categories, the model is extended by them (:func:`extend_categories`) and only the
  new parameters (their columns of the layers that read the one-hot covariates, their
  rows of a per-batch dispersion) are fitted to the query (:func:`fine_tune`), every
  reference weight frozen and batch normalization in evaluation mode, as scArches
  (Lotfollahi et al. 2022) does for scVI: the reference cells' latent codes and
  decoded expression do not change;
- labels are transferred from the reference by a kNN vote in the latent space
  (:func:`transfer_labels`), with a per-cell uncertainty.

:func:`ingest` does the same in place on an AnnData, scanpy's way (``scvae.tl.ingest``);
the stage, file to file, is :func:`scvae.stages.map.run_map`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors

from scvae.data.loaders import CountBatches, counts_matrix
from scvae.errors import InputError
from scvae.module.encoding import module_device
from scvae.module.vae import VAE
from scvae.training.objective import FreeBitsELBO
from scvae.utils.jsonio import jsonable

__all__ = [
    "LATENT_KEY",
    "MIN_GENE_FRACTION",
    "TRANSFERRED_KEY",
    "align_genes",
    "extend_categories",
    "fine_tune",
    "JSON_ONLY",
    "ingest",
    "map_query",
    "transfer_labels",
    "uns_record",
]

if TYPE_CHECKING:
    from scvae.model import SCVAE

log = logging.getLogger(__name__)

MIN_GENE_FRACTION = 0.5
"""Fewest of the model's genes, as a fraction, that a query must have."""

JSON_ONLY = ("genes_missing", "fine_tune_losses", "accuracy_per_label", "new_categories")
"""Entries of a mapping's record kept out of ``uns`` (long lists, or keys named by labels)."""

# State-dict entries with one row per batch category (the rest that change shape with
# the categories read the one-hot covariates in their last input columns).
_BATCH_ROWS = ("px_log_theta", "library_log_mean", "library_log_scale")


def _has_gene_names(var_names: pd.Index) -> bool:
    """False for anndata's default names (0, 1, 2, ...): no gene names at all."""
    names = pd.Index(var_names).astype(str)
    return not (len(names) == 0 or (names == pd.RangeIndex(len(names)).astype(str)).all())


def align_genes(
    adata: ad.AnnData,
    var_names: list[str],
    *,
    layer: str | None = "counts",
    source: str = "query",
) -> tuple[sp.csr_matrix, list[str]]:
    """Counts of ``adata`` over ``var_names``, by gene name; missing genes are zeros.

    Parameters
    ----------
    adata
        The query's cells, raw counts in ``layers[layer]`` (or ``X``).
    var_names
        The model's genes, in its order.
    layer
        Layer of the counts.
    source
        What the query came from, for messages.

    Returns
    -------
    tuple
        The counts (float32 CSR, cells x ``len(var_names)``) and the genes that were
        missing (filled with zeros).

    Raises
    ------
    InputError
        When the query has no gene names (anndata's default 0, 1, 2, ...) or holds fewer
        than :data:`MIN_GENE_FRACTION` of the model's genes.
    """
    if not _has_gene_names(adata.var_names):
        raise InputError(
            f"{source}: the genes have no names (var_names are 0, 1, 2, ...): genes are "
            "matched to the model's by name; give var_names the gene ids the model was "
            f"trained on (e.g. {var_names[:3]})"
        )
    index = pd.Index(adata.var_names).get_indexer(var_names)
    present = index >= 0
    n_present, n_model = int(present.sum()), len(var_names)
    if n_present < MIN_GENE_FRACTION * n_model:
        raise InputError(
            f"{source}: only {n_present} of the model's {n_model} genes are in the query "
            f"(at least {MIN_GENE_FRACTION:.0%} are needed). Are the gene ids of the same "
            f"kind (symbols or Ensembl ids)? The model's start {var_names[:3]}, the "
            f"query's {list(adata.var_names[:3])}"
        )
    missing = [g for g, ok in zip(var_names, present, strict=True) if not ok]
    if missing:
        log.warning(
            "%s: %d of the model's %d genes are missing from the query and are filled "
            "with zeros (first: %s)",
            source,
            len(missing),
            n_model,
            missing[:5],
        )
    X = sp.csr_matrix(counts_matrix(adata, layer), dtype=np.float32)
    # Column j of the result is column index[j] of the query, or zeros.
    cols = np.flatnonzero(present)
    pick = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (index[cols], cols)),
        shape=(X.shape[1], n_model),
    )
    return sp.csr_matrix(X @ pick), missing


def extend_categories(
    model: SCVAE, categories: Mapping[str, list[str]]
) -> tuple[SCVAE, dict[str, torch.Tensor]]:
    """The model with more covariate categories: old weights kept, new ones to fit.

    Parameters
    ----------
    model
        A conditional model.
    categories
        Column -> its categories: the model's, in the same order, followed by the new
        ones (:func:`query_categories`).

    Returns
    -------
    tuple
        The extended model (a new module; ``model`` is left as it was) and, per
        parameter name, a mask that is 1 where an entry is new (to be fitted) and 0
        where it is the reference's (frozen). Parameters without new entries are left
        out.
    """
    old_cats = model.categories
    if list(categories) != list(old_cats) or any(
        list(categories[k][: len(v)]) != list(v) for k, v in old_cats.items()
    ):
        raise ValueError("the categories must start with the model's, in the same order")
    cfg = model.module.config
    n_categories = tuple(len(v) for v in categories.values())
    n_batch = n_categories[0] if cfg.n_batch else 0
    new_module = VAE(replace(cfg, n_categories=n_categories, n_batch=n_batch))
    new_module.to(model.device)
    # Position of each old one-hot column in the new one-hot layout.
    old_pos, offset_old, offset_new = [], 0, 0
    for key, cats in old_cats.items():
        old_pos += [offset_new + i for i in range(len(cats))]
        offset_old += len(cats)
        offset_new += len(categories[key])
    old_pos_t = torch.as_tensor(old_pos)
    n_cov_old, n_cov_new = cfg.n_covariates, sum(n_categories)
    old_state = model.module.state_dict()
    new_state = new_module.state_dict()
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, new in new_state.items():
            old = old_state[name]
            if old.shape == new.shape:
                new.copy_(old)
                continue
            mask = torch.ones_like(new)
            if name.split(".")[-1] in _BATCH_ROWS:
                n_old = old.shape[0]
                new[:n_old] = old
                # New batches start from the mean of the reference's.
                new[n_old:] = old.mean(0, keepdim=True)
                mask[:n_old] = 0
            else:
                # A layer reading [input, one-hot covariates]: the last columns are these.
                n_in = old.shape[1] - n_cov_old
                if new.shape[1] != n_in + n_cov_new:
                    raise ValueError(f"cannot extend {name}: shape {tuple(old.shape)}")
                new.zero_()
                new[:, :n_in] = old[:, :n_in]
                new[:, n_in + old_pos_t] = old[:, n_in:]
                mask[:, :n_in] = 0
                mask[:, n_in + old_pos_t] = 0
            masks[name] = mask
    new_module.load_state_dict(new_state)
    params = dict(new_module.named_parameters())
    masks = {k: v for k, v in masks.items() if k in params}
    # The model's own class: mapping sits above the model and does not import it.
    extended = type(model).from_module(
        new_module.eval(),
        model.train_config,
        model.var_names,
        model.history,
        model.summary,
        model.split,
        layer=model.layer,
        batch_key=model.batch_key,
        covariate_keys=model.covariate_keys,
        categories={k: list(v) for k, v in categories.items()},
        preset=model.preset,
    )
    return extended, masks


def query_categories(
    model: SCVAE, query: ad.AnnData, *, source: str = "query"
) -> dict[str, list[str]]:
    """The model's categories followed by the query's new ones (sorted), per covariate.

    Raises
    ------
    InputError
        When the query lacks a covariate column the model is conditioned on.
    """
    out = {}
    for key, cats in model.categories.items():
        if key not in query.obs.columns:
            raise InputError(
                f"{source}: no obs column {key!r}, which the model is conditioned on (its "
                f"categories: {cats}); give the query's column of the same meaning (for the "
                "batch: batch_key)"
            )
        values = query.obs[key]
        if values.isna().any():
            raise InputError(f"{source}: obs column {key!r} has empty (NaN) values")
        new = sorted(set(values.astype(str)) - set(cats))
        out[key] = list(cats) + new
    return out


def _set_library_priors(model: SCVAE, X: sp.csr_matrix, codes: np.ndarray, n_old: int) -> None:
    """The latent library's prior of each new batch: its cells' log total counts."""
    module = model.module
    if module.config.library != "latent" or not module.config.n_batch:
        return
    log_totals = np.log(np.maximum(np.asarray(X.sum(1)).ravel(), 1.0))
    with torch.no_grad():
        for b in range(n_old, module.config.n_batch):
            sel = log_totals[codes[:, 0] == b]
            if len(sel):
                module.library_log_mean[b] = float(sel.mean())
                module.library_log_scale[b] = float(max(sel.std(), 1e-3))


def _masked(mask: torch.Tensor):
    """A gradient hook that keeps the gradient only where ``mask`` is 1."""
    return lambda grad: grad * mask


def fine_tune(
    model: SCVAE,
    X: sp.csr_matrix,
    codes: np.ndarray,
    masks: Mapping[str, torch.Tensor],
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    seed: int = 0,
) -> list[float]:
    """Fit only the masked (new) entries of ``model``'s parameters to the query's cells.

    Every other parameter gets no gradient; batch normalization and dropout stay in
    evaluation mode (their statistics are the reference's); Adam without weight decay
    then leaves every frozen entry exactly as it was.

    Parameters
    ----------
    model
        The extended model (:func:`extend_categories`); changed in place.
    X
        The query's counts over the model's genes.
    codes
        Their covariate codes under the extended categories.
    masks
        Parameter name -> 1 where the entry is fitted.
    epochs, batch_size, lr, seed
        The fit: passes over the query's cells, cells per step, Adam's step size, seed
        of the shuffling and the samples of z.

    Returns
    -------
    list of float
        The mean negative ELBO per cell of each epoch.
    """
    module = model.module
    params = dict(module.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in masks)
    trainable = [params[n] for n in masks]
    if not trainable:
        return []
    device = module_device(module)
    hooks = [params[n].register_hook(_masked(masks[n].to(device))) for n in masks]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=0.0)
    rows = np.arange(X.shape[0])
    loader = CountBatches(X, rows, batch_size, shuffle=True, seed=seed, covariates=codes)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    losses = []
    objective = FreeBitsELBO()  # the training objective's per-cell terms, KL weight 1
    module.eval()
    try:
        for epoch in range(epochs):
            total, n = 0.0, 0
            for x, c in loader.epoch(epoch, device):
                loss = -objective.terms(module.model, module.guide, x, c).elbo.sum()
                optimizer.zero_grad()
                (loss / x.shape[0]).backward()
                optimizer.step()
                total += float(loss.detach())
                n += x.shape[0]
            losses.append(total / max(n, 1))
    finally:
        for hook in hooks:
            hook.remove()
        for p in params.values():
            p.requires_grad_(True)
        torch.set_rng_state(generator_state)
    log.info("fine-tuned the new categories' parameters: loss %.1f -> %.1f", losses[0], losses[-1])
    return losses


def transfer_labels(
    reference: np.ndarray,
    labels: np.ndarray | pd.Series,
    query: np.ndarray,
    *,
    n_neighbors: int = 15,
) -> tuple[np.ndarray, np.ndarray]:
    """KNN label transfer: each query cell takes the majority label of its neighbours.

    Parameters
    ----------
    reference
        Reference codes, cells x dims.
    labels
        Their labels.
    query
        Query codes, cells x dims.
    n_neighbors
        Reference neighbours per query cell (Euclidean).

    Returns
    -------
    tuple
        Predicted labels (strings) and the uncertainty of each, 1 minus the share of the
        neighbours that vote for the predicted label (0: all agree), as scArches'
        ``uncertainty`` but with equal votes instead of distance weights.
    """
    labels = np.asarray(pd.Series(labels).astype(str))
    k = min(n_neighbors, len(labels))
    nn = NearestNeighbors(n_neighbors=k).fit(reference)
    _, idx = nn.kneighbors(query)
    classes, coded = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(query), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(query)), k), coded[idx].ravel()), 1.0)
    best = votes.argmax(1)
    return classes[best], 1.0 - votes.max(1) / k


LATENT_KEY = "X_scvae"
"""Default ``obsm`` key of the query's codes (its posterior scales: ``f"{key}_scale"``)."""

TRANSFERRED_KEY = "scvae_label"
"""Default ``obs`` key of the transferred labels (uncertainty: ``f"{key}_uncertainty"``)."""


def map_query(
    model: SCVAE,
    query: ad.AnnData,
    *,
    reference: ad.AnnData | None = None,
    label_key: str = "label",
    batch_key: str | None = None,
    layer: str | None = "counts",
    n_neighbors: int = 15,
    epochs: int = 100,
    seed: int = 0,
    source: str = "query",
) -> tuple[ad.AnnData, SCVAE, dict]:
    """Encode a query with a trained model and transfer the reference's labels.

    The model-level form of :func:`ingest`: it also returns the model used, extended
    when the query brings new categories (to decode the query's expression, or to map
    more cells of the same batches).

    Parameters
    ----------
    model
        The trained model (left unchanged; an extended copy is returned when the query
        brings new categories).
    query
        The query's cells with raw counts and gene names.
    reference
        The reference cells with their codes in ``obsm["X_scvae"]`` and labels in
        ``obs[label_key]`` (a ``latent.h5ad``), for the label transfer; None: none.
    label_key
        obs column of the labels, in the reference (transferred) and in the query
        (when present, the accuracy of the transfer is measured against it).
    batch_key
        The query's obs column holding the batch, when it is not named as the model's
        batch column (copied under the model's name).
    layer
        Layer of the query's counts.
    n_neighbors
        Neighbours of the label transfer.
    epochs
        Epochs of fitting the new categories' parameters (when there are any).
    seed
        Seed of the fit.
    source
        What the query came from, for messages.

    Returns
    -------
    tuple
        The query with ``obsm["X_scvae"]``, ``obsm["X_scvae_scale"]``, and with a
        reference, ``obs["scvae_label"]`` (transferred) and
        ``obs["scvae_label_uncertainty"]``; the model used (extended or the given one);
        a record of what was done (genes missing, new categories, the fit's losses, the
        accuracy against the query's labels).
    """
    query = query.copy()
    used, record = _map_into(
        query,
        model,
        reference=reference,
        label_key=label_key,
        batch_key=batch_key,
        layer=layer,
        n_neighbors=n_neighbors,
        epochs=epochs,
        seed=seed,
        source=source,
        key_added=LATENT_KEY,
        label_key_added=TRANSFERRED_KEY,
    )
    return query, used, record


def ingest(
    adata: ad.AnnData,
    model: SCVAE,
    *,
    reference: ad.AnnData | None = None,
    label_key: str = "label",
    batch_key: str | None = None,
    layer: str | None = "counts",
    n_neighbors: int = 15,
    epochs: int = 100,
    seed: int = 0,
    key_added: str = LATENT_KEY,
    label_key_added: str = TRANSFERRED_KEY,
    copy: bool = False,
) -> ad.AnnData | None:
    """Map new cells into a trained model's latent space and transfer a reference's labels.

    What :func:`scanpy.tl.ingest` does with a PCA and a UMAP, with the model's encoder:
    genes are matched by name, new batches get their parameters fitted with every
    reference weight frozen (see the module docstring), and each cell takes the
    majority label of its ``n_neighbors`` nearest reference cells
    (:func:`transfer_labels`).

    Parameters
    ----------
    adata
        The query's cells, with raw counts (``layers[layer]`` or ``X``) and gene names.
    model
        The trained model; left unchanged.
    reference
        The reference cells, with their codes in ``obsm[key_added]`` and their labels
        in ``obs[label_key]``; None: no label transfer.
    label_key
        obs column of the labels, in the reference (transferred) and in ``adata``
        (when present, the accuracy of the transfer is recorded).
    batch_key
        obs column of ``adata`` holding the batch, when it is not named as the model's
        batch column (copied under the model's name).
    layer
        Layer of the counts.
    n_neighbors
        Reference neighbours per cell in the label transfer.
    epochs
        Epochs of fitting the new batches' parameters (when there are any).
    seed
        Seed of that fit.
    key_added
        obsm key of the codes, in ``adata`` and in ``reference``.
    label_key_added
        obs key of the transferred labels.
    copy
        Return a mapped copy instead of writing into ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy when ``copy=True``, else None. Written: ``obsm[key_added]`` (the
        posterior means) and ``obsm[f"{key_added}_scale"]`` (the posterior standard
        deviations); with a reference, ``obs[label_key_added]`` (categorical) and
        ``obs[f"{label_key_added}_uncertainty"]`` (1 minus the share of the neighbours
        that agree); ``obs[model.batch_key]`` when ``batch_key`` names another
        column; ``uns["scvae"]["map"]``, the record: cells, genes missing, new
        categories, mean uncertainty and accuracy.

    Notes
    -----
    When the query brings new batches the model is extended by them for the mapping,
    and that extended model is not kept: :func:`map_query` returns it.
    """
    adata = adata.copy() if copy else adata
    used, record = _map_into(
        adata,
        model,
        reference=reference,
        label_key=label_key,
        batch_key=batch_key,
        layer=layer,
        n_neighbors=n_neighbors,
        epochs=epochs,
        seed=seed,
        source="query",
        key_added=key_added,
        label_key_added=label_key_added,
    )
    adata.uns.setdefault("scvae", {})["map"] = uns_record(record)
    if used is not model:
        log.warning(
            "the query brought new categories %s; the model extended by them is not kept "
            "(scvae.mapping.map_query returns it)",
            record["new_categories"],
        )
    log.info(
        "ingest: added obsm[%r], obsm[%r]%s, uns['scvae']['map']",
        key_added,
        f"{key_added}_scale",
        f", obs[{label_key_added!r}], obs['{label_key_added}_uncertainty']"
        if reference is not None
        else "",
    )
    return adata if copy else None


def uns_record(record: Mapping) -> dict:
    """The record of a mapping as ``uns["scvae"]["map"]`` holds it (h5ad-safe).

    Parameters
    ----------
    record
        What :func:`map_query` returned as its record.

    Returns
    -------
    dict
        Its entries but those of :data:`JSON_ONLY`, as plain values.
    """
    # Per-label accuracy stays in the JSON: a label may hold "/", which h5ad keys cannot.
    return jsonable({k: v for k, v in record.items() if k not in JSON_ONLY})


def _map_into(
    query: ad.AnnData,
    model: SCVAE,
    *,
    reference: ad.AnnData | None,
    label_key: str,
    batch_key: str | None,
    layer: str | None,
    n_neighbors: int,
    epochs: int,
    seed: int,
    source: str,
    key_added: str,
    label_key_added: str,
) -> tuple[SCVAE, dict]:
    """Map ``query`` in place (see :func:`ingest`); the model used and the record."""
    if reference is not None and (
        label_key not in reference.obs.columns or key_added not in reference.obsm
    ):
        raise InputError(
            f"the reference needs its codes in obsm[{key_added!r}] and labels in "
            f"obs[{label_key!r}] (a latent.h5ad of the run)"
        )
    if batch_key is not None and model.batch_key is not None and batch_key != model.batch_key:
        if batch_key not in query.obs.columns:
            raise InputError(f"{source}: no obs column {batch_key!r} (batch_key)")
        query.obs[model.batch_key] = query.obs[batch_key]
    X, missing = align_genes(query, model.var_names, layer=layer, source=source)
    record: dict = {
        "n_cells": int(query.n_obs),
        "n_model_genes": len(model.var_names),
        "n_genes_missing": len(missing),
        "genes_missing": missing[:50],
        "new_categories": {},
        "fine_tune_losses": [],
    }
    used = model
    if model.categories:
        categories = query_categories(model, query, source=source)
        new = {k: v[len(model.categories[k]) :] for k, v in categories.items()}
        record["new_categories"] = {k: v for k, v in new.items() if v}
        if record["new_categories"]:
            log.info("%s: new categories %s: fitting their parameters", source, new)
            used, masks = extend_categories(model, categories)
            codes = used.covariate_codes(query)
            _set_library_priors(used, X, codes, len(model.categories[next(iter(categories))]))
            record["fine_tune_losses"] = fine_tune(used, X, codes, masks, epochs=epochs, seed=seed)
    aligned = ad.AnnData(X, obs=query.obs.copy(), var=pd.DataFrame(index=used.var_names))
    aligned.layers["counts"] = X
    loc, scale = used.get_latent(aligned, return_scale=True)
    query.obsm[key_added] = loc
    query.obsm[f"{key_added}_scale"] = scale
    if reference is not None:
        pred, uncertainty = transfer_labels(
            reference.obsm[key_added], reference.obs[label_key], loc, n_neighbors=n_neighbors
        )
        query.obs[label_key_added] = pd.Categorical(pred)
        query.obs[f"{label_key_added}_uncertainty"] = uncertainty
        record["mean_uncertainty"] = float(uncertainty.mean())
        if label_key in query.obs.columns:
            truth = query.obs[label_key].astype(str).to_numpy()
            record["accuracy"] = float((truth == pred).mean())
            per = pd.Series(truth == pred).groupby(truth).mean()
            record["accuracy_per_label"] = {str(k): float(v) for k, v in per.items()}
            log.info("%s: label transfer accuracy %.3f", source, record["accuracy"])
    return used, record


def joint_embedding(
    reference: ad.AnnData, query: ad.AnnData, *, label_key: str = "label", seed: int = 0
) -> ad.AnnData:
    """Reference and query codes together, with a UMAP of both (no counts).

    ``obs["source"]`` says which cells are which; ``obs["label"]`` holds the
    reference's labels and the query's transferred ones (``scvae_label``);
    ``obs["true_label"]`` the query's own labels where it has them.
    """

    def part(adata: ad.AnnData, name: str, label: str | None) -> ad.AnnData:
        obs = pd.DataFrame(index=[f"{name}:{c}" for c in adata.obs_names])
        obs["source"] = name
        obs["label"] = adata.obs[label].astype(str).values if label in adata.obs else "NA"
        truth = adata.obs[label_key] if label_key in adata.obs else None
        obs["true_label"] = truth.astype(str).values if truth is not None else "NA"
        out = ad.AnnData(np.zeros((adata.n_obs, 0), dtype=np.float32), obs=obs)
        out.obsm["X_scvae"] = np.asarray(adata.obsm["X_scvae"])
        if "scvae_label_uncertainty" in adata.obs:
            out.obs["scvae_label_uncertainty"] = adata.obs["scvae_label_uncertainty"].values
        return out

    query_label = "scvae_label" if "scvae_label" in query.obs else label_key
    joint = ad.concat([part(reference, "reference", label_key), part(query, "query", query_label)])
    for col in ("source", "label", "true_label"):
        joint.obs[col] = joint.obs[col].astype("category")
    sc.pp.neighbors(joint, use_rep="X_scvae", n_neighbors=15, random_state=seed)
    sc.tl.umap(joint, random_state=seed)
    return joint
