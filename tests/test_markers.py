"""Marker genes: Wilcoxon on log-normalized counts, the table, the dot plot."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.figure import Figure

from scvae.errors import InputError
from scvae.markers import (
    MARKER_COLUMNS,
    known_marker_dotplot,
    log_normalized,
    marker_cells,
    marker_table,
    plot_marker_dotplot,
    rank_markers,
)

# Known markers (PanglaoDB, the scanpy PBMC tutorial) of Kang et al.'s cell types.
KANG_MARKERS = {
    "CD14+Mono": {"CD14", "LYZ", "S100A8", "S100A9"},
    "B": {"MS4A1", "CD79A", "CD79B"},
    "NK": {"NKG7", "GNLY", "GZMB"},
}


def _groups(n_per=30, n_genes=20, seed=0) -> ad.AnnData:
    """Three groups; gene g<k> is 8 times as expressed in group k (k = 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["a", "b", "c"], n_per)
    rate = np.full((len(groups), n_genes), 2.0)
    for k in range(3):
        rate[groups == "abc"[k], k] = 16.0
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    names = [f"c{i}" for i in range(len(groups))]
    obs = pd.DataFrame({"cluster": pd.Categorical(groups)}, index=names)
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.layers["counts"] = X.copy()
    return adata


def test_log_normalized_matches_scanpy():
    import scanpy as sc

    adata = _groups()
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(log_normalized(adata.X).toarray(), ref.X.toarray(), rtol=1e-5)


def test_each_group_gets_its_planted_gene_first(tmp_path):
    adata = _groups()
    rank_markers(adata, "cluster", n_genes=5)
    table = marker_table(adata, n_top=3)
    assert list(table.columns) == MARKER_COLUMNS
    top = table[table["rank"] == 1].set_index("group")["gene"].to_dict()
    assert top == {"a": "g0", "b": "g1", "c": "g2"}
    first = table[table["rank"] == 1]
    assert (first["logfoldchange"] > 2).all() and (first["pval_adj"] < 1e-6).all()
    assert (first["frac_in_group"] >= first["frac_rest"]).all()
    # The fractions expressing are kept for the ranked genes only (they were most of a
    # run's final.h5ad), and they are the fractions of the cells tested.
    result = adata.uns["rank_genes_groups"]
    ranked = set(pd.DataFrame(result["names"]).to_numpy().ravel())
    assert set(result["pts"].index) == ranked == set(result["pts_rest"].index)
    assert len(ranked) < adata.n_vars
    in_a = adata.obs["cluster"] == "a"
    expressed = np.asarray((adata.layers["counts"][in_a.to_numpy()] > 0).mean(0)).ravel()
    assert result["pts"].loc["g0", "a"] == pytest.approx(expressed[0])
    # Survives an h5ad round trip, and the dot plot draws.
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = marker_table(ad.read_h5ad(tmp_path / "a.h5ad"), n_top=3)
    pd.testing.assert_frame_equal(back, table)
    plot_marker_dotplot(marker_cells(adata), tmp_path / "dot.png")
    assert (tmp_path / "dot.png").read_bytes()[:4] == b"\x89PNG"


def test_groups_of_one_cell_are_left_out_and_one_group_ranks_nothing():
    adata = _groups()
    adata.obs["cluster"] = adata.obs["cluster"].cat.add_categories("lonely")
    adata.obs.iloc[0, 0] = "lonely"
    rank_markers(adata, "cluster")
    assert set(adata.uns["rank_genes_groups"]["names"].dtype.names) == {"a", "b", "c"}
    adata.obs["one"] = "x"
    assert rank_markers(adata, "one", key_added="one") is None and "one" not in adata.uns
    with pytest.raises(ValueError, match="no obs column 'nope'"):
        rank_markers(adata, "nope")


def test_subset_of_cells_for_large_data():
    adata = _groups(n_per=40)
    rank_markers(adata, "cluster", max_cells=60, seed=1)
    cells = marker_cells(adata)
    assert cells.n_obs == 60 and adata.uns["rank_genes_groups"]["params"]["n_cells"] == 60


def test_kang_cell_types_get_their_known_markers(shared_data):
    path = shared_data / "kang_ifnb_2conditions_counts.h5ad"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    adata = ad.read_h5ad(path)
    rank_markers(adata, "cell_type", layer=None, n_genes=20)
    table = marker_table(adata, n_top=20)
    for cell_type, known in KANG_MARKERS.items():
        top = list(table.loc[table["group"] == cell_type, "gene"])
        assert known & set(top), f"{cell_type}: none of {known} in its top 20 genes {top}"
    mono = list(table.loc[table["group"] == "CD14+Mono", "gene"])
    assert {"CD14", "LYZ"} & set(mono), mono


def _panels(fig: Figure) -> dict[str, list[str]]:
    """The dot plot panels of a figure: y label (the obs column) -> its rows, top down."""
    return {
        ax.get_ylabel(): [t.get_text() for t in ax.get_yticklabels()]
        for ax in fig.axes
        if ax.get_ylabel()
    }


def test_known_marker_dotplot_draws_one_panel_per_grouping(tmp_path):
    adata = _groups()
    # A grouping of numbered groups that is not categorical: rows 1, 2, 10, not 1, 10, 2.
    adata.obs["plate"] = np.resize(["10", "2", "1"], adata.n_obs)
    markers = {"A": ["g0"], "B and C": ["g1", "g2"]}
    fig = known_marker_dotplot(
        adata, marker_genes=markers, groupby=["cluster", "plate"], save=tmp_path / "k.png"
    )
    assert isinstance(fig, Figure)
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"
    panels = _panels(fig)
    assert panels == {
        "cluster": ["a", "b", "c"],
        "plate": ["1", "2", "10"],
    }
    main = next(ax for ax in fig.axes if ax.get_ylabel() == "cluster")
    assert [t.get_text() for t in main.get_xticklabels()] == ["g0", "g1", "g2"]
    assert list(_panels(known_marker_dotplot(adata, marker_genes=markers, groupby="cluster"))) == [
        "cluster"
    ]


def test_known_marker_dotplot_leaves_out_absent_genes_with_one_warning(caplog):
    adata = _groups()
    markers = {"A": ["g0", "CD14"], "B": ["LYZ"], "C": ["g2", "CD14"]}
    with caplog.at_level(logging.WARNING, logger="scvae.markers"):
        fig = known_marker_dotplot(adata, marker_genes=markers, groupby="cluster")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "['CD14', 'LYZ']" in warnings[0]
    main = next(ax for ax in fig.axes if ax.get_ylabel() == "cluster")
    assert [t.get_text() for t in main.get_xticklabels()] == ["g0", "g2"]


def test_known_marker_dotplot_without_genes_in_the_data_draws_nothing(tmp_path, caplog):
    adata = _groups()
    with caplog.at_level(logging.WARNING, logger="scvae.markers"):
        fig = known_marker_dotplot(
            adata, marker_genes={"B": ["MS4A1"]}, groupby="cluster", save=tmp_path / "k.png"
        )
    assert fig is None and not (tmp_path / "k.png").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "['MS4A1']" in warnings[0] and "no dot plot" in warnings[0]
    with pytest.raises(InputError, match=r"marker_genes\['B'\]: expected a list"):
        known_marker_dotplot(adata, marker_genes={"B": "g0"}, groupby="cluster")
    with pytest.raises(InputError, match="no obs column 'nope'"):
        known_marker_dotplot(adata, marker_genes={"A": ["g0"]}, groupby="nope")
