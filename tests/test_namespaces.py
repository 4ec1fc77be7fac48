"""scvae.pp, scvae.tl, scvae.pl: scanpy's conventions, on real cells.

Every public function of the three namespaces is called here: what it writes, that
``copy=True`` leaves the input as it was, that ``key_added`` is honoured, that figures
come back as figures and ``save`` writes them.
"""

from __future__ import annotations

import importlib.util
import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import scvae
from scvae import pl, pp, tl
from scvae.baseline import BaselineUnavailable, pca_embedding
from scvae.errors import InputError
from scvae.mapping import joint_embedding
from scvae.markers import marker_cells

NAMESPACES = {"pp": pp, "tl": tl, "pl": pl}
# Parameters besides the data that a function may take by position, as scanpy's do
# (``sc.tl.rank_genes_groups(adata, groupby)``, ``harmony_integrate(adata, key)``).
POSITIONAL = {"rank_markers": "groupby", "harmony": "batch_key", "ingest": "model"}
# tl functions whose output keys are fixed by what reads them (documented there).
NO_KEY_ADDED = {"score"}


def _state(adata: ad.AnnData) -> dict:
    """Everything a function could add to or change in ``adata``, comparable with ==."""
    X = adata.X
    return {
        "shape": adata.shape,
        "X": float(X.sum()) if X is not None else None,
        "obs": list(adata.obs.columns),
        "var": list(adata.var.columns),
        "obsm": sorted(adata.obsm),
        "obsp": sorted(adata.obsp),
        "layers": sorted(adata.layers),
        "uns": repr(_keys(dict(adata.uns))),
    }


def _keys(tree: dict) -> dict:
    return {k: _keys(dict(v)) if isinstance(v, dict) else None for k, v in tree.items()}


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ faces


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_every_public_function_follows_the_conventions(namespace):
    face = NAMESPACES[namespace]
    assert face.__all__ and sorted(dir(face)) == sorted(face.__all__)
    for name in face.__all__:
        func = getattr(face, name)
        params = list(inspect.signature(func).parameters.values())
        positional = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
        assert positional == [params[0].name, *([POSITIONAL[name]] if name in POSITIONAL else [])]
        options = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
        doc = inspect.getdoc(func)
        assert "Returns\n-------" in doc, name
        if namespace == "pl":
            assert options["save"].default is None, name
            assert "Figure" in str(inspect.signature(func).return_annotation), name
        else:
            assert options["copy"].default is False, name
            # The Returns section says what is written, key by key.
            assert "Written" in doc.split("Returns\n-------")[1], name
        if namespace == "tl" and name not in NO_KEY_ADDED:
            assert "key_added" in options, name


def test_the_namespaces_are_attributes_of_scvae_and_name_the_defining_functions():
    from scvae.clustering import cluster
    from scvae.plotting.qc import qc

    assert {"pp", "tl", "pl"} <= set(scvae.__all__)
    assert scvae.tl is tl and tl.cluster is cluster and pl.qc is qc


# ------------------------------------------------------------------------------ pp


def test_preprocess_in_place_or_on_a_copy(pbmc_counts):
    raw = pbmc_counts.copy()
    before = _state(raw)
    out = pp.preprocess(raw, n_top_genes=500, copy=True)
    assert _state(raw) == before
    assert out.n_vars == 500 and out.n_obs <= raw.n_obs
    assert {"n_genes_by_counts", "total_counts"} <= set(out.obs.columns)
    assert {"mt", "highly_variable", "highly_variable_rank", "variances_norm"} <= set(
        out.var.columns
    )
    assert "counts" in out.layers and out.uns["scvae"]["preprocess"]["genes_out"] == 500
    assert pp.preprocess(raw, n_top_genes=500) is None
    assert raw.shape == out.shape and (raw.obs_names == out.obs_names).all()


def test_add_qc_metrics_from_a_layer(small_counts):
    adata = small_counts.copy()
    adata.X = adata.X * 0  # the counts are in the layer only
    before = _state(adata)
    out = pp.add_qc_metrics(adata, layer="counts", copy=True)
    assert _state(adata) == before
    counts = adata.layers["counts"].toarray()
    np.testing.assert_allclose(out.obs["total_counts"], counts.sum(1))
    mito = counts[:, :3].sum(1) / counts.sum(1) * 100
    np.testing.assert_allclose(out.obs["pct_counts_mt"], mito, rtol=1e-5)
    assert out.var["mt"].sum() == 3
    assert pp.add_qc_metrics(adata, layer="counts") is None
    np.testing.assert_allclose(adata.obs["pct_counts_mt"], out.obs["pct_counts_mt"])


# ------------------------------------------------------------------------------ tl


@pytest.fixture(scope="module")
def clustered(pbmc_pca):
    """PBMC cells clustered under a key of the caller's choosing, with a UMAP."""
    return tl.cluster(pbmc_pca, key_added="my_leiden", resolutions=[0.8], copy=True)


def test_cluster_writes_under_key_added_and_leaves_the_input(pbmc_pca, clustered):
    assert "my_leiden" not in pbmc_pca.obs and "X_umap" not in pbmc_pca.obsm
    assert isinstance(clustered.obs["my_leiden"].dtype, pd.CategoricalDtype)
    assert clustered.obs["my_leiden"].nunique() > 2
    assert "scvae_leiden" not in clustered.obs
    assert clustered.uns["scvae"]["cluster"]["params"]["key"] == "my_leiden"
    assert {"distances", "connectivities"} <= set(clustered.obsp)
    assert clustered.obsm["X_umap"].shape == (clustered.n_obs, 2)


def test_score_returns_the_metrics_or_a_scored_copy(clustered):
    adata = clustered.copy()
    before = _state(adata)
    out = tl.score(adata, copy=True)
    assert _state(adata) == before
    metrics = out.uns["scvae"]["cluster"]["metrics"]
    assert 0 < metrics["leiden_ari"] <= 1 and metrics["n_clusters"] > 2
    assert out.uns["scvae"]["cluster"]["score_params"]["cluster_keys"] == {"r0.8": "my_leiden"}
    assert tl.score(adata) == metrics == adata.uns["scvae"]["cluster"]["metrics"]


def test_rank_markers_under_key_added_and_the_dot_plot_of_the_cells_tested(clustered, tmp_path):
    adata = clustered.copy()
    before = _state(adata)
    out = tl.rank_markers(adata, "my_leiden", key_added="mk", n_genes=10, max_cells=300, copy=True)
    assert _state(adata) == before and "mk" not in adata.uns
    result = out.uns["mk"]
    assert result["params"]["groupby"] == "my_leiden" and result["params"]["n_cells"] == 300
    # The cells rebuilt for the plot are those tested: their detection rates are the test's.
    cells = marker_cells(out, "mk")
    assert cells.n_obs == 300
    group = result["names"].dtype.names[0]
    genes = list(result["names"][group])
    in_group = cells[cells.obs["my_leiden"] == group, genes].X.toarray()
    np.testing.assert_allclose(result["pts"].loc[genes, group], (in_group > 0).mean(0))

    assert tl.rank_markers(adata, "my_leiden", key_added="mk", n_genes=10) is None
    assert adata.uns["mk"]["params"]["n_cells"] == adata.n_obs
    fig = pl.marker_dotplot(adata, key="mk", n_genes=2, save=tmp_path / "dot.png")
    assert isinstance(fig, Figure) and _png(tmp_path / "dot.png")
    with pytest.raises(InputError, match="uns\\['rank_genes_groups'\\] is not a marker ranking"):
        pl.marker_dotplot(adata)


def test_pca_under_key_added(pbmc_counts):
    adata = pbmc_counts.copy()
    before = _state(adata)
    out = tl.pca(adata, n_components=10, key_added="X_pca10", copy=True)
    assert _state(adata) == before
    np.testing.assert_allclose(out.obsm["X_pca10"], pca_embedding(adata, n_components=10))
    params = out.uns["pca10"]["params"]
    assert params["method"] == "pca" and params["n_components"] == 10
    assert params["target_sum"] == pytest.approx(np.median(np.asarray(adata.X.sum(1))))
    assert tl.pca(adata, n_components=5) is None and adata.obsm["X_pca"].shape == (adata.n_obs, 5)
    assert adata.uns["pca"]["params"]["n_components"] == 5


def test_harmony_corrects_the_batches_of_real_plates(cellbench):
    pytest.importorskip("harmonypy")
    adata = cellbench.copy()
    before = _state(adata)
    out = tl.harmony(adata, "batch", n_components=10, n_threads=1, copy=True)
    assert _state(adata) == before
    assert out.obsm["X_harmony"].shape == (adata.n_obs, 10)
    assert out.uns["harmony"]["params"]["batch_keys"] == ["batch"]
    with pytest.raises(InputError, match="no obs column"):
        tl.harmony(adata, "plate")


def test_scvi_embeds_or_says_it_is_unavailable(pbmc_counts):
    adata = pbmc_counts.copy()
    before = _state(adata)
    if importlib.util.find_spec("scvi") is None:
        with pytest.raises(BaselineUnavailable, match="scvi"):
            tl.scvi(adata, key_added="X_sv")
        assert _state(adata) == before
        return
    out = tl.scvi(adata, n_latent=4, max_epochs=1, n_threads=1, key_added="X_sv", copy=True)
    assert _state(adata) == before
    assert out.obsm["X_sv"].shape == (adata.n_obs, 4) and out.uns["sv"]["params"]["n_latent"] == 4


@pytest.fixture(scope="module")
def model(pbmc_counts):
    """A VAE trained briefly on the PBMC cells (no batches)."""
    torch.manual_seed(0)
    return scvae.train(pbmc_counts, preset=None, max_epochs=3, n_latent=5, progress=False)


@pytest.fixture(scope="module")
def reference_and_query(pbmc_counts, model):
    reference, query = pbmc_counts[:400].copy(), pbmc_counts[400:].copy()
    reference.obsm["X_scvae"] = model.get_latent(reference)
    return reference, query


def test_ingest_under_key_added_agrees_with_the_model(model, reference_and_query):
    reference, query = reference_and_query
    ref = reference.copy()
    ref.obsm["X_mine"] = ref.obsm["X_scvae"]
    before = _state(query)
    out = tl.ingest(
        query, model, reference=ref, key_added="X_mine", label_key_added="pred", copy=True
    )
    assert _state(query) == before
    np.testing.assert_allclose(out.obsm["X_mine"], model.get_latent(query), rtol=1e-5, atol=1e-6)
    assert out.obsm["X_mine_scale"].shape == out.obsm["X_mine"].shape
    assert set(out.obs["pred"].cat.categories) <= set(reference.obs["label"].astype(str))
    assert out.obs["pred_uncertainty"].between(0, 1).all()
    record = out.uns["scvae"]["map"]
    assert record["n_cells"] == query.n_obs and 0 <= record["accuracy"] <= 1
    in_place = query.copy()
    assert tl.ingest(in_place, model) is None
    assert "X_scvae" in in_place.obsm and "scvae_label" not in in_place.obs  # no reference
    with pytest.raises(InputError, match="obsm\\['X_other'\\]"):
        tl.ingest(in_place, model, reference=reference, key_added="X_other")


# ------------------------------------------------------------------------------ pl


def test_qc_figure_by_batch(small_counts, tmp_path):
    adata = small_counts.copy()
    adata.obs["plate"] = np.array(["p1", "p2"])[np.arange(adata.n_obs) % 2]
    before = _state(adata)
    fig = pl.qc(adata, batch_key="plate", thresholds={"min_genes": 5}, save=tmp_path / "qc.png")
    assert _state(adata) == before
    assert isinstance(fig, Figure) and len(fig.axes) == 6 and _png(tmp_path / "qc.png")
    assert isinstance(pl.qc(adata), Figure) and not (tmp_path / "none.png").exists()
    with pytest.raises(InputError, match="'donor'"):
        pl.qc(adata, batch_key="donor")


def test_umap_figure_finds_the_recorded_clusters(clustered, tmp_path):
    fig = pl.umap(clustered, save=tmp_path / "umap.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert any("Leiden clusters" in t and "ARI vs labels" in t for t in titles), titles
    assert _png(tmp_path / "umap.png")
    no_umap = clustered.copy()
    del no_umap.obsm["X_umap"]
    with pytest.raises(InputError, match="X_umap"):
        pl.umap(no_umap)


def test_diagnostics_figures_from_the_dictionary_or_an_h5ad(model, pbmc_counts, tmp_path):
    from scvae.diagnostics import diagnose

    diag = diagnose(model, pbmc_counts, k_iwae=5, n_mi=300, n_jacobian=50)
    adata = pbmc_counts.copy()
    adata.uns["scvae"] = {"diagnostics": diag}
    adata.write_h5ad(tmp_path / "final.h5ad")
    back = ad.read_h5ad(tmp_path / "final.h5ad")
    for name in ("kl_per_dim", "sensitivity_vs_kl", "jtj_spectrum"):
        draw = getattr(pl, name)
        from_dict = draw(diag)
        from_h5ad = draw(back, save=tmp_path / f"{name}.png")
        assert isinstance(from_h5ad, Figure) and _png(tmp_path / f"{name}.png")
        assert [a.get_title() for a in from_h5ad.axes] == [a.get_title() for a in from_dict.axes]
        with pytest.raises(InputError, match="no uns\\['scvae'\\]\\['diagnostics'\\]"):
            draw(pbmc_counts)


def test_joint_umap_of_an_ingested_query(model, reference_and_query, tmp_path):
    reference, query = reference_and_query
    mapped = tl.ingest(query, model, reference=reference, copy=True)
    joint = joint_embedding(reference, mapped)
    fig = pl.joint_umap(joint, title="query", save=tmp_path / "joint.png")
    assert isinstance(fig, Figure) and _png(tmp_path / "joint.png")
    assert fig.axes[0].get_title() == "reference and query"
    with pytest.raises(InputError, match="obs\\['source'\\]"):
        pl.joint_umap(mapped)
