"""Count VAE: the Pyro model (generative part) and guide (inference part) side by side."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from scvae.distributions import LIKELIHOODS, count_distribution
from scvae.nn import MLP, GaussianHead, ZSkipMLP

DISPERSIONS = ("gene", "gene-cell")
LIBRARIES = ("observed", "latent")
SKIPS = ("none", "ungated", "gated")
ENCODER_INPUTS = ("log1p", "normalized")
# poutine.scale requires a positive scale; a KL weight of 0 (start of a warm-up) is
# applied as this, which is 0 for every practical purpose.
_MIN_KL_WEIGHT = 1e-12


@dataclass
class VAEConfig:
    """Architecture of a :class:`VAE`; every field is a plain value so it serializes.

    Attributes
    ----------
    n_input
        Number of genes.
    n_latent
        Dimension of z.
    n_hidden, n_layers
        Width and depth of the encoder.
    decoder_hidden, decoder_layers
        Width (0 = ``n_hidden``) and depth of the decoder; 0 layers is a linear decoder
        (a factor model, as LDVAE), a deep, wide decoder is the "over-powerful decoder"
        of the collapse literature.
    dropout
        Dropout in the encoder.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` (one theta per gene) or ``"gene-cell"`` (a decoder head).
    theta
        Fixed inverse dispersion for every gene and cell (0 = learn it). A small value is
        the "noisy decoder": large variance mutes the reconstruction term.
    theta_init
        Initial inverse dispersion when it is learned.
    library
        ``"observed"``: the library size is the cell's total count; ``"latent"``: a
        log-normal latent with a data-driven prior, as in scVI.
    skip
        ``"none"``; ``"ungated"``: the decoder's last hidden layer also receives a summary
        of x (bypasses z); ``"gated"``: that summary is multiplied by a sigmoid gate
        computed from z alone.
    skip_dropout
        Probability that a cell's skip path is switched off in a training step (inverted
        dropout on the whole path, per cell). For those cells only z can carry the
        information, and the encoder cannot tell which cells they are, so z has to
        encode every cell.
    z_skip
        Feed z to every decoder layer and to the output layer (Skip-VAE, Dieng et al.
        2019), so that deep decoders cannot wash z out.
    encoder_input
        What the encoder sees: ``"log1p"`` of the raw counts (as scVI), or
        ``"normalized"``: ``log1p`` of counts scaled to 10,000 per cell, so that the
        encoder does not spend capacity on library size (the decoder still models raw
        counts with the observed library).
    bn_gamma
        BN-VAE (Zhu et al. 2020): batch-normalize the posterior means with this fixed
        scale, which bounds the expected KL per dimension below by ``bn_gamma**2 / 2``.
        0 disables it.
    """

    n_input: int
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    decoder_hidden: int = 0
    decoder_layers: int = 1
    dropout: float = 0.1
    likelihood: str = "nb"
    dispersion: str = "gene"
    theta: float = 0.0
    theta_init: float = 1.0
    library: str = "observed"
    skip: str = "none"
    skip_dropout: float = 0.0
    z_skip: bool = False
    bn_gamma: float = 0.0
    encoder_input: str = "log1p"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("dispersion", self.dispersion, DISPERSIONS),
            ("library", self.library, LIBRARIES),
            ("skip", self.skip, SKIPS),
            ("encoder_input", self.encoder_input, ENCODER_INPUTS),
        ):
            if value not in allowed:
                raise ValueError(f"model setting {name}={value!r} is not one of {allowed}")
        for name in ("n_input", "n_latent", "n_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"model setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("theta", "bn_gamma", "dropout", "decoder_hidden", "decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"model setting {name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.skip_dropout < 1:
            raise ValueError(
                f"model setting skip_dropout must be in [0, 1), got {self.skip_dropout}"
            )
        if self.theta_init <= 0:
            raise ValueError(f"model setting theta_init must be > 0, got {self.theta_init}")

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return asdict(self)


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
            with poutine.scale(scale=max(kl_weight, _MIN_KL_WEIGHT)):
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
            with poutine.scale(scale=max(kl_weight, _MIN_KL_WEIGHT)):
                pyro.sample("z", dist.Normal(q["qz"].loc, q["qz"].scale).to_event(1))
            if q["ql"] is not None:
                pyro.sample("l", dist.Normal(q["ql"].loc, q["ql"].scale).to_event(1))
