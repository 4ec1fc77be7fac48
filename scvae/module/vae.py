"""Count VAE: the Pyro model (generative part) and guide (inference part) side by side."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from scvae.module.config import VAEConfig
from scvae.module.distributions import count_distribution
from scvae.module.nn import MLP, GaussianHead, ZSkipMLP

# poutine.scale requires a positive scale; a KL weight of 0 (start of a warm-up) is
# applied as this, which is 0 for every practical purpose.
MIN_KL_WEIGHT = 1e-12


class VAE(nn.Module):
    """Variational autoencoder for UMI counts with a Pyro model and guide.

    Generative model: ``z ~ N(0, I)``, ``rho = softmax(decoder(z))``,
    ``mu = library * rho``, ``x ~ NB(mu, theta)`` (or ZINB / Poisson). Inference:
    ``q(z | x) = N(m(log1p x), s(log1p x))``.

    Parameters
    ----------
    config
        Architecture settings.
    library_log_mean, library_log_scale
        Prior of the log library size when ``config.library == "latent"`` (mean and
        standard deviation of the log total counts of the training cells).
    """

    def __init__(
        self, config: VAEConfig, *, library_log_mean: float = 0.0, library_log_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.config = c = config
        self.n_input, self.n_latent = c.n_input, c.n_latent

        # Inference network.
        self.encoder = MLP(c.n_input, c.n_hidden, c.n_layers, dropout=c.dropout)
        self.qz_head = GaussianHead(self.encoder.n_out, c.n_latent)
        if c.bn_gamma > 0:
            # Fixed scale, learned shift: the BN-VAE parametrization.
            self.qz_bn = nn.BatchNorm1d(c.n_latent, affine=False, momentum=0.01)
            self.qz_bn_shift = nn.Parameter(torch.zeros(c.n_latent))
        if c.library == "latent":
            self.ql_head = GaussianHead(self.encoder.n_out, 1)
        self.register_buffer("library_log_mean", torch.tensor(float(library_log_mean)))
        self.register_buffer("library_log_scale", torch.tensor(float(library_log_scale)))

        # Generative network.
        dec_hidden = c.decoder_hidden or c.n_hidden
        if c.z_skip:
            self.decoder = ZSkipMLP(c.n_latent, dec_hidden, c.decoder_layers)
        else:
            self.decoder = MLP(c.n_latent, dec_hidden, c.decoder_layers)
        self.px_rho = nn.Linear(self.decoder.n_out, c.n_input)
        if c.z_skip and c.decoder_layers > 0:
            self.px_rho_z = nn.Linear(c.n_latent, c.n_input, bias=False)
        if c.skip != "none":
            self.skip_net = nn.Sequential(nn.Linear(c.n_input, self.decoder.n_out), nn.ReLU())
        if c.skip == "gated":
            self.skip_gate = nn.Linear(c.n_latent, self.decoder.n_out)
        if c.likelihood != "poisson" and c.theta == 0:
            if c.dispersion == "gene":
                init = torch.full((c.n_input,), float(torch.tensor(c.theta_init).log()))
                self.px_log_theta = nn.Parameter(init)
            else:
                self.px_log_theta_head = nn.Linear(self.decoder.n_out, c.n_input)
        if c.likelihood == "zinb":
            self.px_zi = nn.Linear(self.decoder.n_out, c.n_input)

    def inference_parameters(self) -> list[nn.Parameter]:
        """Parameters of the inference network (encoder and posterior heads)."""
        parts = [self.encoder, self.qz_head]
        if self.config.library == "latent":
            parts.append(self.ql_head)
        params = [p for part in parts for p in part.parameters()]
        if self.config.bn_gamma > 0:
            params.append(self.qz_bn_shift)
        return params

    def generative_parameters(self) -> list[nn.Parameter]:
        """Parameters of the generative network (everything but the inference network)."""
        inference = {id(p) for p in self.inference_parameters()}
        return [p for p in self.parameters() if id(p) not in inference]

    # ----------------------------------------------------------------- inference
    def inference(self, x: torch.Tensor) -> dict[str, torch.distributions.Normal | None]:
        """Posterior ``q(z | x)`` (and ``q(log l | x)`` for a latent library).

        Parameters
        ----------
        x
            Raw counts, cells x genes.

        Returns
        -------
        dict
            ``qz``: Normal with batch shape (cells, n_latent); ``ql``: Normal with batch
            shape (cells, 1) or None.
        """
        h = self.encoder(self.encoder_features(x))
        loc, scale = self.qz_head(h)
        if self.config.bn_gamma > 0:
            loc = self.config.bn_gamma * self.qz_bn(loc) + self.qz_bn_shift
        ql = None
        if self.config.library == "latent":
            ql = torch.distributions.Normal(*self.ql_head(h), validate_args=False)
        return {"qz": torch.distributions.Normal(loc, scale, validate_args=False), "ql": ql}

    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input transform of raw counts (see ``VAEConfig.encoder_input``)."""
        if self.config.encoder_input == "normalized":
            x = x * (1e4 / x.sum(-1, keepdim=True).clamp(min=1.0))
        return torch.log1p(x)

    # ---------------------------------------------------------------- generative
    def library(self, x: torch.Tensor) -> torch.Tensor:
        """Observed library size (total counts per cell), shape (cells, 1)."""
        return x.sum(-1, keepdim=True)

    def generative(
        self, z: torch.Tensor, library: torch.Tensor, x: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | dist.TorchDistribution]:
        """Decode ``z`` into the count distribution ``p(x | z)``.

        Parameters
        ----------
        z
            Latent codes, shape (..., cells, n_latent).
        library
            Library sizes, shape (..., cells, 1).
        x
            The counts; needed only by the skip variants, whose decoder also sees them.

        Returns
        -------
        dict
            ``px``: count distribution with batch shape (..., cells, genes);
            ``log_mu``: log of its mean, the natural output to differentiate.
        """
        c = self.config
        batch_shape = z.shape[:-1]
        z_flat = z.reshape(-1, self.n_latent)
        h = self.decoder(z_flat)
        if c.skip != "none":
            if x is None:
                raise ValueError("a decoder with a skip path needs the counts x")
            s = self.skip_net(torch.log1p(x))
            if c.skip_dropout > 0 and self.training:
                keep = torch.rand(s.shape[0], 1, device=s.device) >= c.skip_dropout
                s = s * keep / (1.0 - c.skip_dropout)
            s = s.expand(*batch_shape, -1).reshape(h.shape)
            if c.skip == "gated":
                s = torch.sigmoid(self.skip_gate(z_flat)) * s
            h = h + s
        logits = self.px_rho(h)
        if c.z_skip and c.decoder_layers > 0:
            logits = logits + self.px_rho_z(z_flat)
        log_rho = torch.log_softmax(logits, dim=-1).reshape(*batch_shape, self.n_input)
        log_mu = log_rho + torch.log(library)
        log_theta = self.log_theta(h, batch_shape)
        zi_logits = None
        if self.config.likelihood == "zinb":
            zi_logits = self.px_zi(h).reshape(*batch_shape, self.n_input)
        px = count_distribution(self.config.likelihood, log_mu, log_theta, zi_logits)
        return {"px": px, "log_mu": log_mu}

    def log_theta(
        self, h: torch.Tensor | None = None, batch_shape: torch.Size | None = None
    ) -> torch.Tensor | None:
        """Log inverse dispersion: fixed, per gene, or per gene and cell (needs ``h``)."""
        c = self.config
        if c.likelihood == "poisson":
            return None
        if c.theta > 0:
            return self.library_log_mean.new_tensor(c.theta).log().expand(c.n_input)
        if c.dispersion == "gene":
            return self.px_log_theta
        if h is None:
            return None
        return self.px_log_theta_head(h).reshape(*batch_shape, self.n_input)

    def prior_z(self, like: torch.Tensor) -> torch.distributions.Normal:
        """Standard normal prior ``p(z)`` with the shape of ``like``."""
        zeros = like.new_zeros(())
        return torch.distributions.Normal(zeros, zeros + 1.0, validate_args=False).expand(
            like.shape
        )

    def prior_l(self, n: int) -> torch.distributions.Normal:
        """Log-normal library prior (on the log scale), batch shape (n, 1)."""
        return torch.distributions.Normal(
            self.library_log_mean, self.library_log_scale, validate_args=False
        ).expand((n, 1))

    # ------------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """Pyro model ``p(x, z)``; ``kl_weight`` scales the latent site (KL annealing)."""
        pyro.module("scvae", self)
        n = x.shape[0]
        with pyro.plate("cells", n):
            with poutine.scale(scale=max(kl_weight, MIN_KL_WEIGHT)):
                z = pyro.sample(
                    "z", dist.Normal(0.0, x.new_ones(())).expand([n, self.n_latent]).to_event(1)
                )
            if self.config.library == "latent":
                log_l = pyro.sample(
                    "l",
                    dist.Normal(self.library_log_mean, self.library_log_scale)
                    .expand([n, 1])
                    .to_event(1),
                )
                library = log_l.exp()
            else:
                library = self.library(x)
            px = self.generative(z, library, x)["px"]
            pyro.sample("x", px.to_event(1), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """Pyro guide ``q(z | x)``, same signature and latent sites as :meth:`model`."""
        pyro.module("scvae", self)
        n = x.shape[0]
        q = self.inference(x)
        with pyro.plate("cells", n):
            with poutine.scale(scale=max(kl_weight, MIN_KL_WEIGHT)):
                pyro.sample("z", dist.Normal(q["qz"].loc, q["qz"].scale).to_event(1))
            if q["ql"] is not None:
                pyro.sample("l", dist.Normal(q["ql"].loc, q["ql"].scale).to_event(1))
