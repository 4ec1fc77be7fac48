"""The aggressive phase: encoder-only steps, their batches, the MI stop, the whole phase."""

from __future__ import annotations

import importlib

import numpy as np
import torch
from scipy import sparse

from scvae.data.loaders import CountBatches
from scvae.model import train
from scvae.module.config import VAEConfig
from scvae.module.vae import VAE
from scvae.training.aggressive import (
    encoder_batches,
    encoder_steps,
    optimizer_step,
    update_aggressive_phase,
)
from scvae.training.checkpoint import TrainState
from scvae.training.objective import FreeBitsELBO
from scvae.training.settings import TrainConfig

aggressive_mod = importlib.import_module("scvae.training.aggressive")


def test_encoder_steps_move_only_the_inference_network(small_counts):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(n_input=40, n_latent=3, n_hidden=16))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    x = torch.as_tensor(small_counts.X.toarray())
    batches = iter([(x[:30], None), (x[30:], None)] * 20)
    cfg = TrainConfig(aggressive_steps=7)
    encoder_steps(vae, FreeBitsELBO(), batches, 1.0, optimizer, cfg)
    inference = {id(p) for p in vae.inference_parameters()}
    for name, p in vae.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if id(p) in inference and p.requires_grad and "bn" not in name:
            assert moved, name
        if id(p) not in inference:
            assert not moved, name


def test_encoder_steps_stop_at_the_step_limit(small_counts):
    vae = VAE(VAEConfig(n_input=40, n_latent=3, n_hidden=16))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    x = torch.as_tensor(small_counts.X.toarray())
    batches = iter([(x, None)] * 10)
    encoder_steps(vae, FreeBitsELBO(), batches, 1.0, optimizer, TrainConfig(aggressive_steps=3))
    assert len(list(batches)) == 7


def test_optimizer_step_updates_the_given_parameters_only():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam([*a.parameters(), *b.parameters()], lr=0.1)
    before_a = [p.detach().clone() for p in a.parameters()]
    before_b = [p.detach().clone() for p in b.parameters()]
    loss = (a(torch.ones(2, 3)) + b(torch.ones(2, 3))).sum()
    optimizer_step(loss, list(a.parameters()), optimizer, clip_norm=1.0)
    assert all(p.grad is None for p in b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before_b, strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), before_a, strict=True))


def test_encoder_batches_run_on_through_reshuffled_epochs_seeded_by_the_epoch():
    X = sparse.csr_matrix(np.arange(10, dtype=np.float32).reshape(10, 1))
    loader = CountBatches(X, np.arange(10), 4, shuffle=True, seed=0)

    def first(epoch, n):
        batches = encoder_batches(loader, epoch, torch.device("cpu"))
        return [next(batches)[0].squeeze(-1).tolist() for _ in range(n)]

    n = len(loader)
    passes = first(0, 3 * n)  # endless: beyond one epoch's batches
    per_pass = [sorted(sum(passes[i : i + n], [])) for i in range(0, 3 * n, n)]
    assert all(rows == list(map(float, range(10))) for rows in per_pass)
    assert first(0, 6) == passes[:6]  # the same epoch draws the same batches
    assert first(1, 6) != passes[:6]


def test_the_phase_ends_for_good_once_the_mi_stops_rising(monkeypatch):
    mis = iter([1.0, 2.0, 1.5])
    monkeypatch.setattr(aggressive_mod, "validation_mi", lambda *args: next(mis))
    state = TrainState()
    for epoch in range(2):
        update_aggressive_phase(state, None, None, None, 8, epoch)
        assert state.aggressive
    update_aggressive_phase(state, None, None, None, 8, 2)
    assert not state.aggressive and state.best_val_mi == 2.0


def test_aggressive_phase_runs_and_ends(small_counts):
    model = train(
        small_counts,
        preset=None,
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
    a = train(small_counts, preset=None, **kw)
    b = train(small_counts, preset=None, aggressive_epochs=0, aggressive_steps=3, **kw)
    assert np.array_equal(a.get_latent(small_counts), b.get_latent(small_counts))
