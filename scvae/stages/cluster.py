"""The ``cluster`` stage: cluster and score the embedding of an h5ad, file to file.

:func:`run_cluster` reads the embedding a training or a baseline wrote, clusters it
(:func:`scvae.clustering.cluster`), scores it (:func:`scvae.scores.score` and, for data
with batches, the scIB metrics of :func:`scvae.integration.integration_scores`) and
writes the clustered h5ad and a metrics JSON (:func:`read_metrics_json` reads it back).

The output is a run file that extends the input (:func:`scvae.data.runfiles.write_run`): the
counts and the embedding stay in the files it extends and
:func:`scvae.data.runfiles.read_run` attaches them. What is written where: everything
:func:`scvae.clustering.cluster`,
:func:`scvae.scores.score` and :func:`scvae.integration.integration_scores` store in the
AnnData, the marker genes of :func:`scvae.markers.rank_markers`
(``uns["rank_genes_groups"]`` for the clusters, ``uns["rank_genes_groups_label"]`` for
the labels), plus ``uns["scvae"]["diagnostics"]`` (the run's diagnostics JSON, null as NaN)
when given one. The decoded expression only when asked (``decoded=True``): it is dense
and several times the counts; :mod:`scvae.decode` computes it on demand instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from scvae.clustering import cluster
from scvae.data.loaders import counts_layer
from scvae.data.runfiles import read_run, write_run
from scvae.decode import DECODED_LAYER, add_decoded
from scvae.errors import InputError
from scvae.integration import integration_scores
from scvae.markers import (
    MARKER_COLUMNS,
    known_marker_dotplot,
    marker_cells,
    marker_table,
    plot_marker_dotplot,
    rank_markers,
)
from scvae.plotting.comparison import plot_umap_grid
from scvae.scores import score
from scvae.utils.atomic import atomic_path
from scvae.utils.jsonio import jsonable, read_json, write_json

__all__ = [
    "DIAGNOSTICS_SUMMARY_KEYS",
    "MARKER_KEYS",
    "METRICS_SCHEMA_VERSION",
    "batch_key_of",
    "read_metrics_json",
    "run_cluster",
]

logger = logging.getLogger(__name__)

#: Version of the metrics JSON written by :func:`run_cluster` (2: the ``scib`` section).
METRICS_SCHEMA_VERSION = 2

_SCALAR = (str, bool, int, float, np.generic)
# Sections of uns["scvae"]["train"] whose scalars the metrics JSON summarizes, in
# priority order when a key appears in several (the training stage nests them).
_TRAIN_SECTIONS = ("summary", "model", "training")
#: The diagnostics keys the comparison uses; the full record stays in the h5ad.
DIAGNOSTICS_SUMMARY_KEYS = (
    "verdict",
    "verdict_reason",
    "mi",
    "active_units",
    "kl_per_dim",
    "kl_total",
    "kl_aggregate",
    "iwae_ll_per_cell",
    "n_latent",
)


def _train_scalars(train: Mapping) -> dict:
    """Scalar entries of ``uns["scvae"]["train"]``, flattened one level."""
    out = {k: v for k, v in train.items() if isinstance(v, _SCALAR)}
    for section in _TRAIN_SECTIONS:
        nested = train.get(section)
        if isinstance(nested, Mapping):
            for k, v in nested.items():
                if isinstance(v, _SCALAR):
                    out.setdefault(k, v)
    return out


def batch_key_of(adata: ad.AnnData) -> str | None:
    """The batch column of a pipeline h5ad: ``uns["scvae"]["preprocess"]["batch_key"]``.

    Parameters
    ----------
    adata
        An output of the preprocessing stage or of a later one (they carry its ``uns``).

    Returns
    -------
    str or None
        The ``obs`` column with each cell's batch; None for data without batches.
    """
    preprocess = adata.uns.get("scvae", {}).get("preprocess", {})
    key = preprocess.get("batch_key") if isinstance(preprocess, Mapping) else None
    # h5ad has no None: an absent key, an empty string or a 0-d array of one.
    key = None if key is None else str(np.asarray(key).item())
    return key or None


def _default_run_name(output_h5ad: str | os.PathLike) -> str:
    """``"<name> seed<k>"`` for the pipeline's ``results/<dataset>/<name>/seed<k>/`` layout."""
    parent = Path(output_h5ad).resolve().parent
    return f"{parent.parent.name} {parent.name}"


def _metrics_record(
    adata: ad.AnnData, input_h5ad: str | os.PathLike, diagnostics: Mapping
) -> dict[str, Any]:
    """The metrics JSON before clustering: what the input says about the run."""
    scvae = adata.uns["scvae"]
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "status": "ok",
        "reason": "",
        "input": str(input_h5ad),
        "n_cells": int(adata.n_obs),
        "metrics": {},
        "cluster": {},
        "score": {},
        "scib": {},
        "train": _train_scalars(scvae.get("train", {})),
        "baseline": dict(scvae.get("baseline", {})),
        "diagnostics": {k: diagnostics[k] for k in DIAGNOSTICS_SUMMARY_KEYS if k in diagnostics},
    }


def run_cluster(
    input_h5ad: str | os.PathLike,
    output_h5ad: str | os.PathLike,
    metrics_json: str | os.PathLike,
    *,
    resolutions: Sequence[float] = (1.0,),
    n_neighbors: int = 15,
    kmeans_fits: int = 5,
    seed: int = 0,
    label_key: str = "label",
    use_rep: str = "X_scvae",
    key: str = "scvae_leiden",
    scib: bool = True,
    diagnostics_json: str | os.PathLike | None = None,
    umap_plot: str | os.PathLike | None = None,
    run_name: str | None = None,
    markers: bool = True,
    marker_genes: int = 10,
    markers_tsv: str | os.PathLike | None = None,
    marker_plot: str | os.PathLike | None = None,
    known_markers: Mapping[str, Sequence[str]] | None = None,
    known_markers_plot: str | os.PathLike | None = None,
    model_path: str | os.PathLike | None = None,
    decoded: bool = False,
    decoded_batch: str | None = None,
    umap_max_cells: int = 200_000,
    graph_max_cells: int = 200_000,
) -> dict:
    """Cluster and score the embedding of an h5ad; write the h5ad and a metrics JSON.

    An input that is a baseline marked unavailable (``"unavailable"`` in
    ``uns["scvae"]["baseline"]``, see :func:`scvae.baseline.run_baseline`) is passed
    through without clustering and gets a metrics JSON with ``"status":
    "unavailable"`` and empty ``metrics``, so that the pipeline goes on and the
    comparison shows the gap.

    Metrics JSON keys (strict JSON, NaN as null):

    - ``schema_version`` (2), ``status`` (``"ok"`` or ``"unavailable"``), ``reason``
      (str, empty when ok), ``input`` (str), ``n_cells`` (int);
    - ``metrics``: flat ``{name: number}`` from :func:`scvae.scores.score` and, for
      data with batches (:func:`batch_key_of`), the ``scib_*`` metrics of
      :func:`scvae.integration.integration_scores`;
    - ``cluster`` and ``score``: the clustering and scoring parameters; ``scib``: the
      settings of the scIB metrics (``{}`` without batches or with ``scib=False``);
    - ``train``: scalar entries of ``uns["scvae"]["train"]`` and of its ``summary``,
      ``model`` and ``training`` sections, flattened (``n_latent``, ``epochs``,
      ``train_seconds``, ...); ``{}`` for baselines;
    - ``baseline``: ``uns["scvae"]["baseline"]`` (``{}`` for trained models);
    - ``diagnostics``: the :data:`DIAGNOSTICS_SUMMARY_KEYS` of ``diagnostics_json``
      (``{}`` without one).

    Parameters
    ----------
    input_h5ad
        h5ad with the embedding in ``obsm[use_rep]``.
    output_h5ad
        Where to write the clustered h5ad.
    metrics_json
        Where to write the metrics JSON.
    resolutions
        Leiden resolutions, primary first.
    n_neighbors
        Neighbours per cell in the kNN graph.
    kmeans_fits
        KMeans fits averaged in the KMeans scores (see :func:`scvae.scores.score`).
    seed
        Seed for the graph, Leiden, UMAP, KMeans and silhouette subsampling.
    label_key
        Column of ``obs`` with labels, if any.
    use_rep
        Key of the embedding in ``obsm``.
    key
        Name of the primary clustering in ``obs``.
    scib
        Compute the scIB metrics when the data have batches (1-2 minutes for 1,400-2,000
        cells, most of it compiling numba and JAX code once per process; False skips
        them).
    diagnostics_json
        Diagnostics of the same run; stored whole in ``uns["scvae"]["diagnostics"]``
        of the output h5ad and summarized in the metrics JSON.
    umap_plot
        PNG of the UMAP coloured by label, by batch (data with batches) and by cluster
        (one row of :func:`scvae.plotting.comparison.plot_umap_grid`); always written
        when given.
    run_name
        Title of the UMAP figure; default ``"<name> seed<k>"`` from the output path.
    markers
        Rank marker genes (:func:`scvae.markers.rank_markers`, Wilcoxon on
        log-normalized counts) of the primary clustering into ``uns["rank_genes_groups"]``
        and, when the cells have labels, of the labels into
        ``uns["rank_genes_groups_label"]``.
    marker_genes
        Top genes per cluster (and label) in ``markers_tsv``.
    markers_tsv
        Where to write the marker table (:func:`scvae.markers.marker_table`; header
        only when there are no markers).
    marker_plot
        PNG of the dot plot of the top 3 markers per cluster (a note when there are none).
    known_markers
        Known marker genes of the dataset's cell types: cell type -> gene symbols
        (``datasets.<name>.known_markers`` of the workflow config), for
        ``known_markers_plot``.
    known_markers_plot
        PNG of their dot plot (:func:`scvae.markers.known_marker_dotplot`, on the cells
        and the log-normalized counts of the marker ranking), by label when the cells
        have labels and by primary cluster; a note when there are no such genes (none
        given, or none in the data).
    model_path
        The run's ``model.pt`` (a trained VAE; None for baselines), for ``decoded``.
    decoded
        Also write the decoded expression (:func:`scvae.decode.add_decoded`, per 10,000
        counts) of a run with a ``model_path`` into ``layers["scvae_normalized"]``: a
        dense float32 layer, 4 bytes per cell and gene, several times the size of the
        counts. Off by default: ``scvae.read_run(path, decoded=True)`` or ``scvae
        decode`` compute it from the model when it is wanted.
    decoded_batch
        With ``decoded``, decode every cell as if from this batch (batch-corrected
        expression); None: each cell with its own.
    umap_max_cells
        Above this many cells the UMAP is computed on a random subsample of this size
        (``obsm["X_umap"]`` is NaN for the other cells; :func:`scvae.clustering.cluster`);
        the graph, the clusters and the scores always use every cell.
    graph_max_cells
        Above this many cells the kNN graph (``obsp``) is not written to the output
        (at 10^6 cells it is as large as the rest of the file);
        ``uns["scvae"]["cluster"]["graph"]`` says how to rebuild it.

    Returns
    -------
    dict
        The content written to ``metrics_json`` (NaN as ``None``).
    """
    # Large files: the counts stay on disk (only the embedding is clustered).
    adata = read_run(input_h5ad)
    scvae = adata.uns.setdefault("scvae", {})
    diagnostics = read_json(diagnostics_json) if diagnostics_json else {}
    if diagnostics:
        scvae["diagnostics"] = diagnostics
    record = _metrics_record(adata, input_h5ad, diagnostics)
    if "unavailable" in record["baseline"]:
        record["status"] = "unavailable"
        record["reason"] = str(record["baseline"]["unavailable"])
        logger.warning(
            "%s: baseline unavailable (%s); not clustering", input_h5ad, record["reason"]
        )
    else:
        try:
            cluster(
                adata,
                use_rep=use_rep,
                n_neighbors=n_neighbors,
                resolutions=resolutions,
                key_added=key,
                seed=seed,
                umap_max_cells=umap_max_cells,
            )
        except InputError as err:
            raise InputError(f"{input_h5ad}: {err}") from err
        record["metrics"] = score(
            adata, use_rep=use_rep, label_key=label_key, rng=seed, kmeans_fits=kmeans_fits
        )
        record["cluster"] = adata.uns["scvae"]["cluster"]["params"]
        record["score"] = adata.uns["scvae"]["cluster"]["score_params"]
        batch_key = batch_key_of(adata)
        if scib and batch_key is not None:
            try:
                scib_metrics = integration_scores(
                    adata, use_rep=use_rep, batch_key=batch_key, label_key=label_key
                )
            except InputError as err:
                raise InputError(f"{input_h5ad}: {err}") from err
            record["metrics"].update(scib_metrics)
            record["scib"] = adata.uns["scvae"]["cluster"].get("scib_params", {})

    # The files are written even without markers (the workflow declares them): a table
    # with its header only, a figure that says why it is empty.
    ranked = None
    if markers and record["status"] == "ok":
        ranked = _rank_markers(adata, key, label_key)
    if markers_tsv is not None or marker_plot is not None:
        if markers_tsv is not None:
            tables = [marker_table(adata, k, marker_genes) for k in MARKER_KEYS if k in adata.uns]
            table = pd.concat(tables) if tables else pd.DataFrame(columns=MARKER_COLUMNS)
            with atomic_path(markers_tsv) as tmp:
                table.to_csv(tmp, sep="\t", index=False)
        if marker_plot is not None:
            title = run_name or _default_run_name(output_h5ad)
            why = "markers are off (cluster: markers: false)" if not markers else ""
            plot_marker_dotplot(ranked, marker_plot, title=title, empty_note=why)
    if known_markers_plot is not None:
        title = run_name or _default_run_name(output_h5ad)
        clustered = record["status"] == "ok"
        _plot_known_markers(
            adata, known_markers, known_markers_plot, key, label_key, title, clustered
        )

    if decoded and model_path is not None and record["status"] == "ok":
        add_decoded(adata, model_path, transform_batch=decoded_batch)
    elif decoded and record["status"] == "ok":
        logger.info("no layers[%r]: a baseline has no decoder", DECODED_LAYER)

    obsp = _graph_kept(adata, graph_max_cells) if record["status"] == "ok" else []
    write_run(
        adata,
        output_h5ad,
        extends=input_h5ad,
        obsm=[k for k in ("X_umap",) if k in adata.obsm and record["status"] == "ok"],
        obsp=obsp,
        layers=[DECODED_LAYER] if DECODED_LAYER in adata.layers else [],
    )
    record = jsonable(record)
    write_json(record, metrics_json)
    if umap_plot is not None:
        name = run_name or _default_run_name(output_h5ad)
        plot_umap_grid(
            {name: adata},
            umap_plot,
            label_key=label_key,
            cluster_key=key,
            batch_key=batch_key_of(adata),
        )
    logger.info("wrote %s and %s", output_h5ad, metrics_json)
    return record


MARKER_KEYS = ("rank_genes_groups", "rank_genes_groups_label")
"""Keys in ``uns`` of the marker genes of the clusters and of the labels."""


def _rank_markers(adata: ad.AnnData, key: str, label_key: str) -> ad.AnnData | None:
    """Marker genes of the clusters and the labels; the cells ranked by cluster (for the plot)."""
    layer = counts_layer(adata)
    rank_markers(adata, key, layer=layer, key_added=MARKER_KEYS[0])
    if label_key in adata.obs.columns:
        rank_markers(adata, label_key, layer=layer, key_added=MARKER_KEYS[1])
    return marker_cells(adata, MARKER_KEYS[0]) if MARKER_KEYS[0] in adata.uns else None


def _plot_known_markers(
    adata: ad.AnnData,
    known_markers: Mapping[str, Sequence[str]] | None,
    path: str | os.PathLike,
    key: str,
    label_key: str,
    title: str,
    clustered: bool,
) -> None:
    """The dot plot of the known marker genes by label and cluster, or a note why none."""
    fig = None
    if not known_markers:
        note = "no known marker genes given (config: datasets.<name>.known_markers)"
    elif not clustered:
        note = "no clusters: the baseline is unavailable (metrics.json says why)"
    else:
        keys = [k for k in (label_key, key) if k in adata.obs.columns]
        fig = known_marker_dotplot(
            adata,
            marker_genes=known_markers,
            groupby=keys,
            layer=counts_layer(adata),
            title=title,
            save=path,
        )
        note = "none of the known marker genes is among the data's genes"
    if fig is None:
        plot_marker_dotplot(None, path, empty_note=note)


def _graph_kept(adata: ad.AnnData, max_cells: int) -> list[str]:
    """The ``obsp`` keys of the kNN graph to write: all of them up to ``max_cells`` cells.

    Above, ``uns["neighbors"]`` goes too (scanpy then asks for ``sc.pp.neighbors``
    rather than looking for a graph that is not there) and
    ``uns["scvae"]["cluster"]["graph"]`` says how to rebuild the graph.
    """
    graph = [k for k in ("distances", "connectivities") if k in adata.obsp]
    if adata.n_obs <= max_cells:
        return graph
    params = adata.uns.pop("neighbors", {}).get("params", {})
    rep = params.get("use_rep", "X_scvae")
    k = params.get("n_neighbors", 15)
    adata.uns["scvae"]["cluster"]["graph"] = (
        f"not stored ({adata.n_obs} cells > graph_max_cells {max_cells}); rebuild it with "
        f"sc.pp.neighbors(adata, use_rep={rep!r}, n_neighbors={k}) on scvae.read_run(...)"
    )
    logger.info("kNN graph not written (%d cells > graph_max_cells %d)", adata.n_obs, max_cells)
    return []


def read_metrics_json(path: str | os.PathLike) -> dict:
    """Read a metrics JSON written by :func:`run_cluster`; null becomes NaN.

    Parameters
    ----------
    path
        The JSON file.

    Returns
    -------
    dict
        The record, with ``nan`` wherever the file has null.
    """
    return read_json(path)
