"""KL per dimension and active units against torch's KL and hand-made posteriors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from scvae.diagnostics.kl import active_units, kl_per_dim


def test_kl_per_dim_matches_torch():
    rng = np.random.default_rng(1)
    loc, scale = rng.normal(size=(50, 4)), rng.uniform(0.1, 2.0, size=(50, 4))
    expected = torch.distributions.kl_divergence(
        Normal(torch.tensor(loc), torch.tensor(scale)), Normal(0.0, 1.0)
    ).mean(0)
    np.testing.assert_allclose(kl_per_dim(loc, scale), expected.numpy(), rtol=1e-12)
    assert kl_per_dim(np.zeros((5, 3)), np.ones((5, 3))) == pytest.approx(np.zeros(3))
    with pytest.raises(ValueError):
        kl_per_dim(loc, -scale)


def test_active_units_threshold():
    loc = np.stack([np.linspace(-1, 1, 101), np.full(101, 3.0), 0.05 * np.linspace(-1, 1, 101)], 1)
    count, mask = active_units(loc, threshold=0.01)
    assert count == 1 and mask.tolist() == [True, False, False]
    assert active_units(loc, threshold=1e-4)[0] == 2
