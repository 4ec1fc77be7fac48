"""Architecture settings: unknown options and out-of-range values are rejected."""

from __future__ import annotations

import pytest

from scvae.module.config import VAEConfig


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(n_input=5, likelihood="gauss")
    with pytest.raises(ValueError, match="skip"):
        VAEConfig(n_input=5, skip="maybe")
    with pytest.raises(ValueError, match="theta"):
        VAEConfig(n_input=5, theta=-1.0)
