"""The AnnData edge: diagnose on a prior encoder and on real data, JSON and h5ad round trips,
reproducibility, and the workflow entry with its figures."""

from __future__ import annotations

import json
import math

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scvae.diagnostics.suite import FIGURE_NAMES, diagnose, read_diagnostics, write_diagnostics
from scvae.diagnostics.verdicts import VERDICTS
from scvae.errors import InputError
from scvae.model import SCVAE
from scvae.stages.diagnose import run_diagnose
from scvae.training.settings import TrainConfig


def test_prior_encoder_module_is_collapsed(tiny_vae, tiny_counts):
    module = tiny_vae()
    with torch.no_grad():  # the encoder ignores x and outputs N(0, 1)
        module.qz_head.loc.weight.zero_()
        module.qz_head.loc.bias.zero_()
        module.qz_head.raw_scale.weight.zero_()
        module.qz_head.raw_scale.bias.fill_(math.log(math.expm1(1.0 - module.qz_head.min_scale)))
    X = tiny_counts(n_cells=40)
    model = SCVAE.from_module(
        module, TrainConfig(), [f"g{i}" for i in range(12)], split=["train"] * 40
    )
    adata = anndata.AnnData(X)
    adata.var_names = [f"g{i}" for i in range(12)]
    d = diagnose(model, adata, k_iwae=5, n_jacobian=10)
    assert d["mi"] == pytest.approx(0.0, abs=1e-6)
    assert d["kl_total"] == pytest.approx(0.0, abs=1e-6)
    assert d["active_units"] == 0
    assert d["verdict"] == "collapsed"
    assert d["validation"] == {} and d["iwae_cells"] == "all" and d["settings"]["layer"] == "X"


# ------------------------------------------------------------- real data, end to end


@pytest.fixture(scope="module")
def trained(shared_data):
    from scvae.model import train

    with h5py.File(shared_data / "pbmc4k_top2000.h5") as f:
        X = np.asarray(f["X"][:800], dtype=np.float32)
    adata = anndata.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"gene{i}" for i in range(X.shape[1])]
    adata.layers["counts"] = adata.X.copy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = train(
        adata,
        preset=None,
        n_latent=6,
        max_epochs=3,
        kl_schedule="linear",
        warmup_fraction=0.5,
        seed=0,
        device="cpu",
        progress=False,
    )
    torch.set_num_threads(threads)
    return model, adata


TOP_KEYS = {
    "verdict",
    "verdict_reason",
    "mi",
    "active_units",
    "active_mask",
    "kl_per_dim",
    "kl_total",
    "kl_mean",
    "kl_aggregate",
    "mi_per_dim",
    "mi_cap",
    "iwae_ll_per_cell",
    "iwae_ll_per_count",
    "elbo",
    "recon",
    "jtj_eigenvalues",
    "sensitivity_per_dim",
    "kl_sensitivity_spearman",
    "dispersion",
    "n_cells",
    "settings",
    "validation",
}


def _same(a, b):
    """Equal, with NaN equal to NaN and arrays equal to lists."""
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        b = list(np.asarray(b).tolist()) if not isinstance(b, list) else b
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(float(b))) or a == float(b)
    return a == b


def test_diagnose_real_data(trained, tmp_path):
    model, adata = trained
    d = diagnose(model, adata, k_iwae=20, n_jacobian=100, seed=0)
    assert TOP_KEYS <= set(d)
    assert d["verdict"] in VERDICTS and d["verdict_reason"]
    assert d["n_cells"] == 800 and d["n_latent"] == 6 and len(d["kl_per_dim"]) == 6
    assert d["n_validation_cells"] == 80 and d["iwae_cells"] == "validation"
    val = d["validation"]
    assert set(val) == set(d) - {
        "settings",
        "validation",
        "n_genes",
        "n_latent",
        "n_validation_cells",
    }
    assert val["n_cells"] == 80 and val["mi_cap"] == pytest.approx(math.log(80))
    assert 0 <= d["mi"] <= d["mi_cap"]
    assert d["kl_mean"] == pytest.approx(d["mi"] + d["kl_aggregate"])
    assert d["elbo"] <= d["iwae_ll_per_cell"] < 0
    assert d["dispersion"]["kind"] == "gene"
    assert d["settings"]["model"]["n_latent"] == 6

    # JSON: strict, atomic, NaN <-> null.
    d["kl_sensitivity_spearman"] = float("nan")
    path = tmp_path / "diagnostics.json"
    write_diagnostics(d, path)
    raw = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert raw["kl_sensitivity_spearman"] is None
    assert _same(d, read_diagnostics(path))

    # h5ad: the dictionary goes into uns as it is.
    adata2 = adata.copy()
    adata2.uns["scvae"] = {"diagnostics": d}
    adata2.write_h5ad(tmp_path / "a.h5ad")
    back = anndata.read_h5ad(tmp_path / "a.h5ad").uns["scvae"]["diagnostics"]
    assert _same(d, _plain(back))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def test_diagnose_is_reproducible(trained):
    model, adata = trained
    state = torch.get_rng_state()
    a = diagnose(model, adata, k_iwae=5, n_jacobian=50, seed=3)
    b = diagnose(model, adata, k_iwae=5, n_jacobian=50, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert _same(a, b)
    c = diagnose(model, adata, k_iwae=5, n_jacobian=50, seed=4)
    assert c["mi"] != a["mi"]


def test_run_diagnose_writes_json_and_figures(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "model.pt")
    adata.write_h5ad(tmp_path / "latent.h5ad")
    d = run_diagnose(
        tmp_path / "model.pt",
        tmp_path / "latent.h5ad",
        tmp_path / "out" / "diagnostics.json",
        figure_dir=tmp_path / "figures",
        k_iwae=5,
        n_jacobian=50,
    )
    assert read_diagnostics(tmp_path / "out" / "diagnostics.json")["verdict"] == d["verdict"]
    for name in FIGURE_NAMES:
        png = tmp_path / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("*.tmp*")]


def test_diagnose_rejects_unknown_thresholds(trained):
    model, adata = trained
    with pytest.raises(ValueError, match="unknown verdict threshold"):
        diagnose(model, adata, thresholds={"min_information": 1.0})


# ------------------------------------------------------------- batches


def test_batch_in_z_on_cellbench_is_high_without_conditioning(cellbench_models):
    adata, models = cellbench_models
    model = models["unconditional"]
    assert model.batch_key is None
    # The batch column is named (the model has none), and its chance level is the share
    # of the largest plate.
    d = diagnose(model, adata, k_iwae=5, n_jacobian=50, n_mi=500, batch_key="batch")
    b = d["batch_in_z"]
    shares = adata.obs["batch"].value_counts(normalize=True)
    assert b["chance"] == pytest.approx(shares.max()) and b["n_batches"] == 5
    assert b["accuracy"] > 2.5 * b["chance"]  # the plates separate in z
    assert "batch ('batch', 5 batches)" in d["verdict_reason"]
    assert "batch_in_z" not in d["validation"]
    # Without a batch column to read there is no batch_in_z.
    assert "batch_in_z" not in diagnose(model, adata, k_iwae=2, n_jacobian=10, n_mi=100)


def test_diagnose_a_conditional_model(cellbench_models, tmp_path):
    adata, models = cellbench_models
    model = models["conditional"]
    d = diagnose(model, adata, k_iwae=5, n_jacobian=50, n_mi=500)
    assert d["verdict"] in VERDICTS
    assert d["batch_in_z"]["batch_key"] == "batch" and 0 < d["batch_in_z"]["accuracy"] <= 1
    assert np.isfinite(d["iwae_ll_per_cell"]) and d["iwae_ll_per_cell"] >= d["elbo"]
    assert d["dispersion"]["kind"] == "gene-batch" and d["dispersion"]["n_batches"] == 5
    assert d["settings"]["model"]["n_categories"] == [5]
    assert d["validation"]["verdict"] in VERDICTS
    assert _same(d, diagnose(model, adata, k_iwae=5, n_jacobian=50, n_mi=500))
    write_diagnostics(d, tmp_path / "d.json")
    assert _same(read_diagnostics(tmp_path / "d.json"), d)
    # Encoding, IWAE and Jacobian read each cell's batch: other batches, other numbers.
    shifted = adata.copy()
    cats = model.categories["batch"]
    shifted.obs["batch"] = (
        shifted.obs["batch"].astype(str).map(dict(zip(cats, cats[1:] + cats[:1], strict=True)))
    )
    other = diagnose(model, shifted, k_iwae=5, n_jacobian=50, n_mi=500)
    assert other["iwae_ll_per_cell"] != d["iwae_ll_per_cell"]
    missing = adata.copy()
    del missing.obs["batch"]
    with pytest.raises(InputError, match="no obs column 'batch'"):
        diagnose(model, missing, k_iwae=2, n_jacobian=10, n_mi=100)
