"""Mapping a query onto a trained model: genes by name, new batches (scArches), labels."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scvae.errors import InputError
from scvae.mapping import (
    align_genes,
    extend_categories,
    joint_embedding,
    map_query,
    transfer_labels,
)
from scvae.model import SCVAE
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.settings import TrainConfig

GENES = [f"g{j}" for j in range(12)]


def _cells(n, batches, seed=0, genes=GENES) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.poisson(3.0, size=(n, len(genes))).astype(np.float32))
    obs = pd.DataFrame(
        {
            "batch": np.array(batches)[np.arange(n) % len(batches)],
            "label": np.array(["A", "B"])[np.arange(n) % 2],
        },
        index=[f"c{seed}_{i}" for i in range(n)],
    )
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes))
    adata.layers["counts"] = X.copy()
    return adata


def _conditional_model(**kw) -> SCVAE:
    torch.manual_seed(0)
    cfg = VAEConfig(n_input=len(GENES), n_latent=3, n_hidden=8, n_categories=(2,), n_batch=2, **kw)
    module = VAE(cfg, library_log_mean=[3.0, 3.5])
    # Non-trivial batch-norm statistics, as after training.
    module.train()
    with torch.no_grad():
        x = torch.poisson(torch.full((64, len(GENES)), 3.0))
        c = torch.randint(0, 2, (64, 1))
        for _ in range(20):
            module.inference(x, c)
    return SCVAE.from_module(
        module.eval(), TrainConfig(), GENES, batch_key="batch", categories={"batch": ["p1", "p2"]}
    )


def test_align_genes_fills_missing_with_zeros_and_warns(caplog):
    query = _cells(5, ["p1"], genes=GENES[::-1][:9] + ["other1", "other2"])
    with caplog.at_level(logging.WARNING):
        X, missing = align_genes(query, GENES)
    assert missing == ["g0", "g1", "g2"]
    assert "3 of the model's 12 genes are missing" in caplog.text
    dense = X.toarray()
    assert (dense[:, :3] == 0).all()
    expected = query[:, GENES[3:]].X.toarray()
    np.testing.assert_array_equal(dense[:, 3:], expected)


def test_align_genes_errors_without_names_or_with_too_few_genes():
    few = _cells(5, ["p1"], genes=GENES[:5] + [f"x{j}" for j in range(7)])
    with pytest.raises(InputError, match="only 5 of the model's 12 genes.*symbols or Ensembl"):
        align_genes(few, GENES)
    unnamed = _cells(5, ["p1"], genes=[str(j) for j in range(12)])
    with pytest.raises(InputError, match="no names"):
        align_genes(unnamed, GENES)


def test_transfer_labels_votes_and_uncertainty():
    ref = np.r_[np.zeros((10, 2)), np.full((10, 2), 10.0)]
    labels = ["a"] * 10 + ["b"] * 10
    query = np.array([[0.1, 0.0], [9.9, 10.0]])
    pred, unc = transfer_labels(ref, labels, query, n_neighbors=5)
    assert list(pred) == ["a", "b"] and list(unc) == [0.0, 0.0]
    pred, unc = transfer_labels(ref, labels, np.array([[5.0, 5.0]]), n_neighbors=20)
    assert unc[0] == pytest.approx(0.5)


@pytest.mark.parametrize("library", ["observed", "latent"])
def test_new_batch_fits_only_new_parameters_and_reference_latent_is_unchanged(library):
    model = _conditional_model(encode_covariates=True, dispersion="gene-batch", library=library)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    reference = _cells(40, ["p1", "p2"], seed=1)
    ref_latent = model.get_latent(reference)
    reference.obsm["X_scvae"] = ref_latent
    query = _cells(30, ["p3"], seed=2)
    query.X = query.X * 2  # another depth: something for the new batch to fit
    query.layers["counts"] = query.X.copy()
    mapped, used, record = map_query(model, query, reference=reference, epochs=5)
    assert record["new_categories"] == {"batch": ["p3"]}
    assert used.categories == {"batch": ["p1", "p2", "p3"]}
    assert len(record["fine_tune_losses"]) == 5
    # The given model is untouched; the reference cells' codes are exactly the same.
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    # Every reference entry of every parameter and buffer is exactly as it was.
    fresh, masks = extend_categories(model, used.categories)
    fitted = used.module.state_dict()
    for name, value in fresh.module.state_dict().items():
        frozen = masks[name] == 0 if name in masks else torch.ones_like(value, dtype=bool)
        if name.endswith("library_log_mean") or name.endswith("library_log_scale"):
            frozen = frozen & (torch.arange(len(value)) < 2)  # new rows: set from the query
        assert torch.equal(fitted[name][frozen], value[frozen]), name
    # So the reference cells' codes are the same; not bit for bit, as the wider input
    # layer sums its (zero) new terms in another order (float32 rounding, < 1e-6).
    np.testing.assert_allclose(used.get_latent(reference), ref_latent, rtol=0, atol=1e-6)
    # So is their decoded mean (every reference weight frozen, batch norm in eval mode).
    x = torch.as_tensor(reference.X.toarray())
    c = torch.as_tensor(model.covariate_codes(reference))
    z = torch.as_tensor(ref_latent)
    with torch.no_grad():
        mu_old = model.module.generative(z, x.sum(-1, keepdim=True), x, c)["log_mu"]
        mu_new = used.module.generative(z, x.sum(-1, keepdim=True), x, c)["log_mu"]
    torch.testing.assert_close(mu_new, mu_old, rtol=0, atol=1e-5)
    # The new batch's parameters did move.
    theta = used.module.px_log_theta
    assert torch.equal(theta[:2], before["px_log_theta"])
    assert not torch.allclose(theta[2], before["px_log_theta"].mean(0))
    assert mapped.obsm["X_scvae"].shape == (30, 3)
    assert set(mapped.obs["scvae_label"]) <= {"A", "B"}
    assert record["accuracy"] == pytest.approx(
        (mapped.obs["scvae_label"].astype(str) == mapped.obs["label"]).mean()
    )


def test_extended_model_saves_and_loads(tmp_path):
    model = _conditional_model()
    used, masks = extend_categories(model, {"batch": ["p1", "p2", "p9"]})
    assert set(masks) >= {"decoder.layers.0.0.weight"}
    used.save(tmp_path / "m.pt")
    back = SCVAE.load(tmp_path / "m.pt")
    assert back.categories == {"batch": ["p1", "p2", "p9"]}
    with pytest.raises(ValueError, match="start with the model's"):
        extend_categories(model, {"batch": ["p2", "p1", "p9"]})


def test_known_batches_need_no_fit_and_a_missing_batch_column_is_named():
    model = _conditional_model()
    query = _cells(10, ["p2"], seed=3)
    mapped, used, record = map_query(model, query)
    assert used is model and record["new_categories"] == {} and not record["fine_tune_losses"]
    np.testing.assert_array_equal(mapped.obsm["X_scvae"], model.get_latent(query))
    plate = query.copy()
    plate.obs = plate.obs.rename(columns={"batch": "plate"})
    with pytest.raises(InputError, match="no obs column 'batch'"):
        map_query(model, plate)
    mapped, _, _ = map_query(model, plate, batch_key="plate")
    np.testing.assert_array_equal(mapped.obsm["X_scvae"], model.get_latent(query))


def test_joint_embedding_has_both_sources():
    model = _conditional_model()
    reference = _cells(30, ["p1", "p2"], seed=1)
    reference.obsm["X_scvae"] = model.get_latent(reference)
    mapped, _, _ = map_query(model, _cells(20, ["p1"], seed=4), reference=reference)
    joint = joint_embedding(reference, mapped)
    assert joint.n_obs == 50 and joint.obsm["X_umap"].shape == (50, 2)
    assert list(joint.obs["source"].value_counts().sort_index()) == [20, 30]


def test_map_command_writes_every_output(tmp_path):
    from scvae.cli import main

    model = _conditional_model()
    model.save(tmp_path / "model.pt")
    reference = _cells(30, ["p1", "p2"], seed=1)
    reference.obsm["X_scvae"] = model.get_latent(reference)
    reference.write_h5ad(tmp_path / "latent.h5ad")
    query = _cells(20, ["p1", "p7"], seed=5)
    query.obs = query.obs.rename(columns={"batch": "plate", "label": "cell_type"})
    query.write_h5ad(tmp_path / "query_in.h5ad")
    out = {name: tmp_path / name for name in ("q.h5ad", "j.h5ad", "m.json", "m.pt", "u.png")}
    args = ["map", "--model", str(tmp_path / "model.pt"), "--reference",
            str(tmp_path / "latent.h5ad"), "--query", str(tmp_path / "query_in.h5ad"),
            "--output", str(out["q.h5ad"]), "--joint", str(out["j.h5ad"]),
            "--record", str(out["m.json"]), "--model-out", str(out["m.pt"]),
            "--umap-plot", str(out["u.png"]), "--label-key", "cell_type",
            "--batch-key", "plate", "--params", '{"epochs": 2}']  # fmt: skip
    assert main(args) == 0
    record = json.loads(out["m.json"].read_text())
    assert record["new_categories"] == {"batch": ["p7"]} and len(record["fine_tune_losses"]) == 2
    assert 0 <= record["accuracy"] <= 1 and record["epochs"] == 2
    mapped = ad.read_h5ad(out["q.h5ad"])
    assert {"scvae_label", "scvae_label_uncertainty"} <= set(mapped.obs.columns)
    assert mapped.uns["scvae"]["map"]["accuracy"] == record["accuracy"]
    assert SCVAE.load(out["m.pt"]).categories["batch"] == ["p1", "p2", "p7"]
    assert ad.read_h5ad(out["j.h5ad"]).obsm["X_umap"].shape == (50, 2)
    assert out["u.png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "label_key", "batch_key", "split", "min_accuracy"),
    [
        ("kang_ifnb_2conditions_counts.h5ad", "cell_type", None, ("condition", "control"), 0.5),
        ("cellbench_5batches_counts.h5ad", "cell_line", "batch", ("batch", "sc_dropseq"), 0.8),
    ],
    ids=["kang-control-to-stimulated", "cellbench-plates-to-dropseq"],
)
def test_label_transfer_on_real_data(shared_data, name, label_key, batch_key, split, min_accuracy):
    import scvae
    from scvae.preprocess import preprocess

    cells = scvae.read_counts(shared_data / name, label_key=label_key)
    column, value = split
    is_reference = (cells.obs[column] == value).to_numpy()
    if batch_key is not None:  # the held-out plate is the query
        is_reference = ~is_reference
    reference, query = cells[is_reference].copy(), cells[~is_reference].copy()
    preprocess(reference, batch_key=batch_key)
    model = scvae.train(
        reference, batch_key=batch_key, n_latent=10, max_epochs=15, batch_size=256,
        decoder_layers=0, seed=0, progress=False,
    )  # fmt: skip
    reference.obsm["X_scvae"] = model.get_latent(reference)
    _, _, record = map_query(
        model, query, reference=reference, batch_key=batch_key, epochs=20, seed=0
    )
    assert record["n_genes_missing"] == 0
    assert bool(record["new_categories"]) == (batch_key is not None)
    assert record["accuracy"] > min_accuracy, record
