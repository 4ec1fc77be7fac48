"""The collapse atlas: the grid, the models' new skip designs, aggressive training, scores."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from scvae import metrics as M
from scvae.atlas.core import (
    atlas_jobs,
    atlas_runs,
    collapse_point,
    mechanism_points,
    run_atlas_job,
    run_atlas_report,
    subsample,
    summarize,
)
from scvae.cluster import posterior_sample_scores
from scvae.module import VAE, VAEConfig

train_module = importlib.import_module("scvae.training.loop")


def _config(**atlas):
    grid = {
        "datasets": {"a": {"path": "a.h5"}},
        "n_cells": 100,
        "base": {"max_epochs": 3},
        "sweep_seeds": [0],
        "seeds": [0, 1],
        "healthy": "healthy_variant",
        "mechanisms": {
            "kl_weight": {"knob": "beta", "values": [1, 8], "collapse": 8},
            "skip": {
                "points": {"none": {}, "ungated": {"skip": "ungated"}},
                "collapse": "ungated",
                "remedies": {"dropout": {"skip_dropout": 0.5}},
            },
        },
        "remedies": {"none": {}, "linear": {"kl_schedule": "linear", "warmup_fraction": 0.5}},
    }
    grid.update(atlas)
    return {
        "defaults": {"n_latent": 4, "max_epochs": 100},
        "variants": {"healthy_variant": {"free_bits": 0.5}},
        "atlas": grid,
    }


def test_grid_expands_sweeps_remedies_and_healthy_reference():
    runs = atlas_runs(_config())
    names = [r.name for r in runs]
    assert names == [
        "sweep.kl_weight.beta1",
        "sweep.kl_weight.beta8",
        "remedy.kl_weight.none",
        "remedy.kl_weight.linear",
        "sweep.skip.none",
        "sweep.skip.ungated",
        "remedy.skip.none",
        "remedy.skip.linear",
        "remedy.skip.dropout",
        "healthy",
    ]
    by_name = {r.name: r for r in runs}
    # defaults, then base, then the point, then the remedy
    assert by_name["sweep.kl_weight.beta8"].settings == {"n_latent": 4, "max_epochs": 3, "beta": 8}
    assert by_name["remedy.skip.dropout"].settings["skip"] == "ungated"
    assert by_name["remedy.skip.dropout"].settings["skip_dropout"] == 0.5
    assert by_name["remedy.kl_weight.linear"].settings["beta"] == 8
    assert by_name["healthy"].settings == {"n_latent": 4, "max_epochs": 3, "free_bits": 0.5}

    jobs = atlas_jobs(_config())
    assert [len(jobs[j]) for j in ("sweep.kl_weight", "remedy.kl_weight.none", "healthy")] == [
        2,
        2,
        2,
    ]
    assert [r["seed"] for r in jobs["remedy.skip.dropout"]] == [0, 1]
    assert [r["point"] for r in jobs["sweep.skip"]] == ["none", "ungated"]


def test_mechanism_base_and_global_remedy_subset():
    config = _config()
    skip = config["atlas"]["mechanisms"]["skip"]
    skip["base"] = {"batch_size": 32}
    skip["global_remedies"] = ["none"]
    by_name = {r.name: r for r in atlas_runs(config)}
    # The mechanism's base reaches its sweep and remedies, and only those.
    assert by_name["sweep.skip.none"].settings["batch_size"] == 32
    assert by_name["remedy.skip.dropout"].settings["batch_size"] == 32
    assert "batch_size" not in by_name["remedy.kl_weight.none"].settings
    assert "batch_size" not in by_name["healthy"].settings
    # Only the chosen global remedies run on it; its own remedies still do.
    assert "remedy.skip.linear" not in by_name
    assert {"remedy.skip.none", "remedy.skip.dropout", "remedy.kl_weight.linear"} <= set(by_name)

    skip["global_remedies"] = ["none", "cyclical"]
    with pytest.raises(ValueError, match=r"global_remedies \['cyclical'\]"):
        atlas_runs(config)
    skip["global_remedies"] = ["none"]
    skip["base"] = {"bogus": 1}
    with pytest.raises(ValueError, match=r"mechanism skip base: unknown setting"):
        atlas_runs(config)


def test_grid_errors_name_the_problem():
    with pytest.raises(ValueError, match="collapse 3"):
        collapse_point("kl_weight", {"knob": "beta", "values": [1, 2], "collapse": 3})
    with pytest.raises(ValueError, match="knob 'bogus'"):
        mechanism_points("m", {"knob": "bogus", "values": [1]})
    with pytest.raises(ValueError, match=r"remedy r: unknown setting\(s\) \['nope'\]"):
        atlas_runs(_config(remedies={"r": {"nope": 1}}))
    with pytest.raises(ValueError, match="healthy variant 'missing'"):
        atlas_runs(_config(healthy="missing"))


def test_subsample_is_fixed_and_sorted():
    rows = subsample(1000, 100, seed=0)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, subsample(1000, 100, seed=0))
    assert np.array_equal(subsample(50, 100), np.arange(50))
    assert np.array_equal(subsample(50, 0), np.arange(50))


# ------------------------------------------------------------------ skip designs


def _vae(**kw) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(n_input=30, n_latent=3, n_hidden=16, **kw))


def test_skip_dropout_switches_whole_cells_off_in_training_only():
    vae = _vae(skip="ungated", skip_dropout=0.5)
    x = torch.poisson(torch.full((400, 30), 3.0))
    z = torch.randn(400, 3)
    lib = x.sum(-1, keepdim=True)
    vae.eval()
    first = vae.generative(z, lib, x)["log_mu"]
    assert torch.equal(first, vae.generative(z, lib, x)["log_mu"])  # eval: nothing dropped
    vae.train()
    torch.manual_seed(1)
    log_rho = vae.generative(z, lib, x)["log_mu"] - torch.log(lib)
    # What a cell without its skip path gets: the decoder of z alone (same batch statistics).
    torch.manual_seed(1)
    without = torch.log_softmax(vae.px_rho(vae.decoder(z)), dim=-1)
    dropped = torch.isclose(log_rho, without, atol=1e-5).all(-1)
    assert 0.35 < dropped.float().mean().item() < 0.65
    # The kept cells' paths are scaled up by 1 / (1 - p), as in inverted dropout.
    kept = ~dropped
    h = vae.decoder(z) + 2.0 * vae.skip_net(torch.log1p(x))
    expected = torch.log_softmax(vae.px_rho(h), dim=-1)
    assert torch.allclose(log_rho[kept], expected[kept], atol=1e-5)


def test_z_skip_decoder_feeds_z_to_every_layer():
    vae = _vae(z_skip=True, decoder_layers=3)
    assert len(vae.decoder.z_inputs) == 2 and hasattr(vae, "px_rho_z")
    vae.eval()
    z = torch.randn(5, 3, requires_grad=True)
    out = vae.generative(z, torch.full((5, 1), 100.0))["log_mu"]
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # Sample dimensions are accepted, as for the plain decoder.
    out2 = vae.generative(torch.randn(2, 5, 3), torch.full((5, 1), 100.0))["log_mu"]
    assert out2.shape == (2, 5, 30)


def test_skip_dropout_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="skip_dropout"):
        VAEConfig(n_input=3, skip_dropout=1.0)


def test_inference_and_generative_parameters_partition_the_module():
    vae = _vae(bn_gamma=0.5, library="latent", skip="gated")
    inf = {id(p) for p in vae.inference_parameters()}
    gen = {id(p) for p in vae.generative_parameters()}
    assert inf and gen and not inf & gen
    assert inf | gen == {id(p) for p in vae.parameters()}
    assert id(vae.qz_bn_shift) in inf and id(vae.skip_net[0].weight) in gen


# ----------------------------------------------------------- aggressive training


def test_encoder_steps_move_only_the_inference_network(small_counts):
    from scvae.training.objective import FreeBitsELBO
    from scvae.training.settings import TrainConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(n_input=40, n_latent=3, n_hidden=16))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    x = torch.as_tensor(small_counts.X.toarray())
    batches = iter([x[:30], x[30:]] * 20)
    cfg = TrainConfig(aggressive_steps=7)
    train_module._encoder_steps(vae, FreeBitsELBO(), batches, 1.0, optimizer, cfg)
    inference = {id(p) for p in vae.inference_parameters()}
    for name, p in vae.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if id(p) in inference and p.requires_grad and "bn" not in name:
            assert moved, name
        if id(p) not in inference:
            assert not moved, name


def test_aggressive_phase_runs_and_ends(small_counts):
    model = train_module.train(
        small_counts,
        n_latent=3,
        n_hidden=16,
        max_epochs=6,
        batch_size=20,
        aggressive_epochs=4,
        aggressive_steps=5,
        early_stopping=False,
        progress=False,
    )
    flags = model.history["aggressive"].tolist()
    assert flags[0] and not any(flags[4:])
    # Once it ends it stays off.
    first_off = flags.index(False) if False in flags else len(flags)
    assert not any(flags[first_off:])
    assert np.isfinite(model.history["train_elbo"]).all()


def test_aggressive_off_is_bit_identical_to_the_plain_loop(small_counts):
    kw = dict(n_latent=3, n_hidden=16, max_epochs=2, batch_size=20, progress=False)
    a = train_module.train(small_counts, **kw)
    b = train_module.train(small_counts, aggressive_epochs=0, aggressive_steps=3, **kw)
    assert np.array_equal(a.get_latent(small_counts), b.get_latent(small_counts))


# ------------------------------------------------------------ posterior samples


def test_posterior_draw_exposes_a_collapsed_code_that_the_means_hide():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 100)
    centers = rng.normal(size=(3, 4))
    structure = centers[np.repeat([0, 1, 2], 100)] + 0.05 * rng.normal(size=(300, 4))
    # Collapsed: every mean is within 1e-3 of 0 and the posterior scale is the prior's.
    loc, scale = 1e-3 * structure, np.ones((300, 4))
    assert M.kmeans_ari_nmi(loc, labels, rng=0)["ari"] > 0.95  # scale-invariant trace
    collapsed = posterior_sample_scores(loc, scale, labels, n_neighbors=10, resolution=0.1)
    assert collapsed["kmeans_ari_sample"] < 0.05 and collapsed["leiden_ari_sample"] < 0.1
    # Healthy: means spread well beyond the posterior scale; the draw keeps the structure.
    healthy = posterior_sample_scores(
        structure, np.full((300, 4), 0.05), labels, n_neighbors=10, resolution=0.1
    )
    assert healthy["kmeans_ari_sample"] > 0.9 and healthy["leiden_ari_sample"] > 0.8


# ----------------------------------------------------------------- end to end


def test_atlas_job_and_report_end_to_end(pbmc300_h5ad, tmp_path):
    config = _config(base={"max_epochs": 2, "n_hidden": 16, "batch_size": 64})
    jobs = atlas_jobs(config)
    params = {"n_cells": 150, "diagnostics": {"k_iwae": 2, "n_jacobian": 20}}
    paths = []
    for job in ("sweep.kl_weight", "remedy.kl_weight.none", "healthy"):
        out = tmp_path / f"{job}.json"
        records = run_atlas_job(pbmc300_h5ad, out, jobs[job], dataset="pbmc300", **params)
        paths.append(out)
        assert len(records) == len(jobs[job])
    saved = json.loads(paths[0].read_text())
    assert [r["point"] for r in saved] == ["beta1", "beta8"]
    for key in ("mi", "active_units", "kmeans_ari", "leiden_ari_sample", "kl_per_dim"):
        assert key in saved[0]
    assert saved[0]["n_cells"] == 150 and len(saved[0]["history"]["train_kl"]) == 2

    table, summary = tmp_path / "atlas.tsv", tmp_path / "summary.tsv"
    remedies = tmp_path / "remedies.tsv"
    df = run_atlas_report(paths, table, summary, remedies=remedies, figure_dir=tmp_path / "figures")
    assert len(df) == 2 + 2 + 2
    assert list(df["stage"].unique()) == ["sweep", "remedy", "healthy"]
    healthy_mean = df.loc[df.stage == "healthy", "kmeans_ari_sample"].mean()
    row = df.iloc[0]
    assert row["d_kmeans_ari_sample"] == pytest.approx(row["kmeans_ari_sample"] - healthy_mean)
    s = summarize(df)
    assert set(s["n_seeds"]) == {1, 2}
    assert (tmp_path / "figures" / "sweep_kl_weight.png").exists()
    best = pd.read_csv(remedies, sep="\t")
    assert list(best["mechanism"]) == ["kl_weight"]
    assert "collapse_mi" in best and "healthy_kmeans_ari_sample" in best


def test_score_adds_posterior_draw_scores_when_scales_are_present(small_counts):
    from scvae.cluster import cluster, score

    rng = np.random.default_rng(0)
    adata = small_counts
    codes = {"B": 0.0, "T": 5.0, "NK": 10.0}
    loc = np.array([[codes[c], 0.0] for c in adata.obs["cell_type"]]) + rng.normal(size=(60, 2))
    adata.obsm["X_scvae"] = loc
    adata.obs["label"] = adata.obs["cell_type"]
    cluster(adata, resolutions=[0.5], n_neighbors=10, umap=False)
    without = score(adata)
    assert "kmeans_ari_sample" not in without  # baselines (PCA) have no posterior scale
    adata.obsm["X_scvae_scale"] = np.full((60, 2), 100.0)  # the draw is all noise
    noisy = score(adata)
    assert noisy["kmeans_ari"] > 0.9 and noisy["kmeans_ari_sample"] < 0.2
    assert "leiden_ari_sample" in noisy


# ------------------------------------------------------------ calibrated dispersion


def test_calibrated_dispersion_moves_log_theta_to_the_moment_estimate(small_counts):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(n_input=40, n_latent=3, n_hidden=16, theta_init=1e-3))
    vae.eval()  # deterministic encoder and decoder: the same estimate every call
    x = torch.as_tensor(small_counts.X.toarray())
    with torch.no_grad():
        loc = vae.inference(x)["qz"].loc
        mu = vae.generative(loc, x.sum(-1, keepdim=True), x)["log_mu"].exp().double().numpy()
    xn = x.double().numpy()
    moment = (mu**2).mean(0) / np.maximum(((xn - mu) ** 2 - mu).mean(0), 1e-12)
    expected = np.log(np.clip(moment, 1e-4, 1e4))
    start = vae.px_log_theta.detach().double().numpy().copy()
    for _ in range(30):
        train_module._calibrate_dispersion(vae, x)
    rate = train_module._CALIBRATION_RATE
    want = expected + (start - expected) * (1 - rate) ** 30
    assert np.allclose(vae.px_log_theta.detach().double().numpy(), want, atol=1e-4)


def test_calibrated_dispersion_needs_a_learned_gene_dispersion(small_counts):
    with pytest.raises(ValueError, match="calibrated_dispersion=True needs"):
        train_module.train(
            small_counts, likelihood="poisson", calibrated_dispersion=True, max_epochs=1
        )


def test_calibrated_training_keeps_theta_out_of_the_optimizer(small_counts):
    model = train_module.train(
        small_counts,
        n_latent=3,
        n_hidden=16,
        max_epochs=3,
        batch_size=20,
        theta_init=1e-4,
        calibrated_dispersion=True,
        aggressive_epochs=1,
        aggressive_steps=2,
        progress=False,
    )
    # Started at 1e-4, the dispersion follows the fit within a few steps.
    assert model.history["theta_median"].iloc[-1] > 1e-2


def test_remedy_table_picks_the_best_remedy_and_checks_the_tolerance():
    from scvae.atlas.core import remedy_table

    def rows(stage, mechanism, remedy, mi, ari, seeds=(0, 1)):
        return [
            {
                "dataset": "d",
                "stage": stage,
                "mechanism": mechanism,
                "point": "p",
                "remedy": remedy,
                "seed": s,
                "mi": mi,
                "active_units": 10 if mi > 0.1 else 0,
                "kmeans_ari": ari,
                "leiden_ari": ari,
                "kmeans_ari_sample": ari,
                "leiden_ari_sample": ari,
                "collapsed": mi < 0.1,
            }
            for s in seeds
        ]

    df = pd.DataFrame(
        rows("healthy", "", "none", 5.0, 0.70)
        + rows("remedy", "m", "none", 0.01, 0.0)
        + rows("remedy", "m", "good", 4.0, 0.67)
        + rows("remedy", "m", "meh", 2.0, 0.40)
        + rows("remedy", "n", "none", 0.01, 0.0)
        + rows("remedy", "n", "weak", 1.0, 0.50)
    )
    table = remedy_table(df).set_index("mechanism")
    assert table.loc["m", "best_remedy"] == "good" and bool(table.loc["m", "restores"])
    assert table.loc["m", "best_gap"] == pytest.approx(0.03)
    assert table.loc["n", "best_remedy"] == "weak" and not bool(table.loc["n", "restores"])
    assert table.loc["m", "collapse_mi"] == pytest.approx(0.01)
    assert table.loc["m", "collapse_n_collapsed"] == 2
