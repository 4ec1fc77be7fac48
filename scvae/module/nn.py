"""Neural-network building blocks shared by the encoder and the decoder."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected layers: Linear -> BatchNorm -> ReLU -> Dropout, repeated.

    Parameters
    ----------
    n_in
        Input width.
    n_hidden
        Width of every hidden layer.
    n_layers
        Number of hidden layers (0 gives the identity).
    dropout
        Dropout probability after each layer.
    batch_norm
        Whether to normalize each hidden layer over the minibatch.
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_layers: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(n_layers):
            layers.append(nn.Linear(width, n_hidden))
            if batch_norm:
                # scvi-tools' settings: small momentum and a large eps keep the running
                # statistics stable with sparse, heavy-tailed count inputs.
                layers.append(nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = n_hidden
        super().__init__(*layers)
        self.n_out = width


class CovariateMLP(nn.Module):
    """:class:`MLP` whose every layer also receives the one-hot covariates.

    Layer ``l`` computes ``Dropout(ReLU(BN(W_l [h_{l-1}, c])))``: the covariates enter the
    first layer and every hidden layer (scVI's ``deeply_inject_covariates``), so depth
    cannot wash them out.

    Parameters
    ----------
    n_in
        Input width (without the covariates).
    n_cov
        Width of the one-hot covariates.
    n_hidden
        Width of every hidden layer.
    n_layers
        Number of hidden layers (0 gives the identity, which ignores the covariates).
    dropout
        Dropout probability after each layer.
    """

    def __init__(
        self, n_in: int, n_cov: int, n_hidden: int, n_layers: int, *, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MLP((n_in if i == 0 else n_hidden) + n_cov, n_hidden, 1, dropout=dropout)
            for i in range(n_layers)
        )
        self.n_out = n_hidden if n_layers > 0 else n_in

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer of input ``h`` with covariates ``c`` (same rows)."""
        for layer in self.layers:
            h = layer(torch.cat([h, c], -1))
        return h


class ZSkipMLP(nn.Module):
    """Decoder MLP whose every layer also receives its input (Skip-VAE, Dieng et al. 2019).

    Layer ``l`` computes ``ReLU(BN(W_l h_{l-1} + U_l z))``: z reaches every layer
    directly, so depth cannot wash it out.

    Parameters
    ----------
    n_in
        Width of z.
    n_hidden
        Width of every hidden layer.
    n_layers
        Number of hidden layers (0 gives the identity).
    """

    def __init__(self, n_in: int, n_hidden: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(n_in if i == 0 else n_hidden, n_hidden) for i in range(n_layers)
        )
        # The first layer already sees z.
        self.z_inputs = nn.ModuleList(
            nn.Linear(n_in, n_hidden, bias=False) for _ in range(max(n_layers - 1, 0))
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3) for _ in range(n_layers)
        )
        self.n_out = n_hidden if n_layers > 0 else n_in

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer."""
        h = z
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms, strict=True)):
            pre = layer(h) if i == 0 else layer(h) + self.z_inputs[i - 1](z)
            h = torch.relu(norm(pre))
        return h


class GaussianHead(nn.Module):
    """Map a hidden representation to the mean and standard deviation of a Normal.

    The scale goes through a softplus with a small floor so that it stays positive and
    its gradient does not vanish for very small scales.
    """

    def __init__(self, n_in: int, n_out: int, *, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.loc = nn.Linear(n_in, n_out)
        self.raw_scale = nn.Linear(n_in, n_out)
        self.min_scale = min_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``."""
        return self.loc(h), nn.functional.softplus(self.raw_scale(h)) + self.min_scale
