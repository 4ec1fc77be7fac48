"""The ``map`` stage: a model, its reference run and a query in; the mapped query out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from scvae.data.h5ad import read_h5ad, write_h5ad
from scvae.data.readers import read_counts
from scvae.mapping import joint_embedding, map_query, uns_record
from scvae.model import SCVAE
from scvae.plotting.mapping import joint_umap
from scvae.utils.jsonio import write_json

log = logging.getLogger(__name__)


def run_map(
    model_path: str | os.PathLike,
    reference_h5ad: str | os.PathLike,
    query_path: str | os.PathLike,
    output_h5ad: str | os.PathLike,
    joint_h5ad: str | os.PathLike,
    record_json: str | os.PathLike,
    *,
    model_out: str | os.PathLike | None = None,
    umap_plot: str | os.PathLike | None = None,
    format: str | None = None,
    layer: str | None = None,
    label_key: str | None = None,
    batch_key: str | None = None,
    transpose: bool = False,
    n_neighbors: int = 15,
    epochs: int = 100,
    seed: int = 0,
) -> dict:
    """The ``map`` stage: read a model, its reference latent and a query; write the mapping.

    Parameters
    ----------
    model_path
        The trained ``model.pt``.
    reference_h5ad
        The reference run's ``latent.h5ad`` (codes in ``obsm["X_scvae"]``, labels in
        ``obs["label"]``).
    query_path
        The query's counts, any format :func:`scvae.data.readers.read_counts` reads.
    output_h5ad
        The query with its codes and transferred labels.
    joint_h5ad
        Codes and UMAP of reference and query together (:func:`joint_embedding`).
    record_json
        What was done and the accuracy (:func:`map_query`'s record).
    model_out
        Where to write the model used (extended when the query brought new categories).
    umap_plot
        PNG of the joint UMAP (:func:`scvae.plotting.mapping.joint_umap`).
    format, layer, label_key, transpose
        Reading the query (:func:`scvae.data.readers.read_counts`); the labels, when
        given, measure the transfer.
    batch_key, n_neighbors, epochs, seed
        As :func:`map_query`.

    Returns
    -------
    dict
        The record written to ``record_json``.
    """
    model = SCVAE.load(model_path)
    # The run file: cells, labels and the latent; its counts are not needed.
    reference = read_h5ad(reference_h5ad)
    query = read_counts(
        query_path, format=format, label_key=label_key, layer=layer, transpose=transpose
    )
    has_labels = "label" in reference.obs.columns
    mapped, used, record = map_query(
        model,
        query,
        reference=reference if has_labels else None,
        batch_key=batch_key,
        n_neighbors=n_neighbors,
        epochs=epochs,
        seed=seed,
        source=str(query_path),
    )
    if not has_labels:
        log.warning("%s has no labels (obs['label']): no label transfer", reference_h5ad)
    record = {
        "model": str(model_path),
        "reference": str(reference_h5ad),
        "query": str(query_path),
        "n_neighbors": n_neighbors,
        "epochs": epochs if record["new_categories"] else 0,
        "seed": seed,
        **record,
    }
    mapped.uns.setdefault("scvae", {})["map"] = uns_record(record)
    joint = joint_embedding(reference, mapped, seed=seed)
    if model_out is not None:
        used.save(model_out)
    write_h5ad(mapped, output_h5ad)
    write_h5ad(joint, joint_h5ad)
    write_json(record, record_json)
    if umap_plot is not None:
        joint_umap(joint, title=Path(query_path).name, save=umap_plot)
    log.info("wrote %s, %s and %s", output_h5ad, joint_h5ad, record_json)
    return record
