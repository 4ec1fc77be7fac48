"""Count VAE: the Pyro model (generative part) and guide (inference part) side by side."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from scvae.module.config import VAEConfig
from scvae.module.distributions import count_distribution
from scvae.module.nn import MLP, CovariateMLP, GaussianHead, ZSkipMLP

# poutine.scale requires a positive scale; a KL weight of 0 (start of a warm-up) is
# applied as this, which is 0 for every practical purpose.
MIN_KL_WEIGHT = 1e-12


def check_codes(c: object) -> None:
    """Reject covariate codes that are not a tensor (or None), naming the likely mistake."""
    # kl_weight used to be the second positional argument of model and guide: a number in
    # the place of the codes would otherwise be ignored by an unconditional model.
    if c is not None and not isinstance(c, torch.Tensor):
        raise TypeError(
            f"c holds the covariate codes (a LongTensor, cells x covariates) or None, got "
            f"{type(c).__name__}; pass kl_weight by keyword"
        )


class VAE(nn.Module):
    """Variational autoencoder for UMI counts with a Pyro model and guide.

    Generative model: ``z ~ N(0, I)``, ``rho = softmax(decoder(z, s))``,
    ``mu = library * rho``, ``x ~ NB(mu, theta)`` (or ZINB / Poisson). Inference:
    ``q(z | x) = N(m(log1p x), s(log1p x))``.

    A conditional model (``config.n_categories`` not empty) takes the integer codes
    ``c`` of each cell's covariates (cells x covariates, the batch first) and one-hots
    them into ``s``: they enter the first and every hidden layer of the decoder (scVI's
    ``deeply_inject_covariates``), or add per-gene offsets to the logits of a linear
    decoder; the encoder sees them too with ``config.encode_covariates``. A latent
    library gets a prior per batch, and ``dispersion="gene-batch"`` one inverse
    dispersion per gene and batch. An unconditional model ignores ``c``.

    Parameters
    ----------
    config
        Architecture settings.
    library_log_mean, library_log_scale
        Prior of the log library size when ``config.library == "latent"`` (mean and
        standard deviation of the log total counts of the training cells): one value, or
        one per batch category when ``config.n_batch > 0`` (a single value is then used
        for every batch).
    """

    def __init__(
        self,
        config: VAEConfig,
        *,
        library_log_mean: float | Sequence[float] = 0.0,
        library_log_scale: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        self.config = c = config
        self.n_input, self.n_latent = c.n_input, c.n_latent
        self.n_covariates = n_cov = c.n_covariates
        # One inverse dispersion per gene and batch only when there is a batch; without
        # one, gene-batch is the per-gene dispersion.
        self.theta_per_batch = c.dispersion == "gene-batch" and c.n_batch > 0

        # Inference network.
        if n_cov and c.encode_covariates:
            self.encoder = CovariateMLP(c.n_input, n_cov, c.n_hidden, c.n_layers, dropout=c.dropout)
        else:
            self.encoder = MLP(c.n_input, c.n_hidden, c.n_layers, dropout=c.dropout)
        self.qz_head = GaussianHead(self.encoder.n_out, c.n_latent)
        if c.bn_gamma > 0:
            # Fixed scale, learned shift: the BN-VAE parametrization.
            self.qz_bn = nn.BatchNorm1d(c.n_latent, affine=False, momentum=0.01)
            self.qz_bn_shift = nn.Parameter(torch.zeros(c.n_latent))
        if c.library == "latent":
            self.ql_head = GaussianHead(self.encoder.n_out, 1)
        self.register_buffer("library_log_mean", self._library_prior(library_log_mean))
        self.register_buffer("library_log_scale", self._library_prior(library_log_scale))

        # Generative network.
        dec_hidden = c.decoder_hidden or c.n_hidden
        if c.z_skip:
            # The covariates join z, which this decoder feeds to every layer.
            self.decoder = ZSkipMLP(c.n_latent + n_cov, dec_hidden, c.decoder_layers)
        elif n_cov:
            self.decoder = CovariateMLP(c.n_latent, n_cov, dec_hidden, c.decoder_layers)
        else:
            self.decoder = MLP(c.n_latent, dec_hidden, c.decoder_layers)
        self.px_rho = nn.Linear(self.decoder.n_out, c.n_input)
        if c.z_skip and c.decoder_layers > 0:
            self.px_rho_z = nn.Linear(c.n_latent, c.n_input, bias=False)
        if n_cov and not c.z_skip and c.decoder_layers == 0:
            # A linear decoder: per-gene offsets of each category (as LDVAE's), starting
            # at 0, i.e. from the unconditional model: random initial offsets (+-0.7 for
            # two batches) are batch effects the code first has to learn to undo
            # (slower integration on two-batch synthetic data).
            self.px_rho_cov = nn.Linear(n_cov, c.n_input, bias=False)
            nn.init.zeros_(self.px_rho_cov.weight)
        if c.skip != "none":
            self.skip_net = nn.Sequential(nn.Linear(c.n_input, self.decoder.n_out), nn.ReLU())
        if c.skip == "gated":
            self.skip_gate = nn.Linear(c.n_latent, self.decoder.n_out)
        if c.likelihood != "poisson" and c.theta == 0:
            if c.dispersion in ("gene", "gene-batch"):
                init = torch.full((c.n_input,), float(torch.tensor(c.theta_init).log()))
                if self.theta_per_batch:
                    init = init.expand(c.n_batch, -1).clone()
                self.px_log_theta = nn.Parameter(init)
            else:
                self.px_log_theta_head = nn.Linear(self.decoder.n_out, c.n_input)
        if c.likelihood == "zinb":
            self.px_zi = nn.Linear(self.decoder.n_out, c.n_input)

    def _library_prior(self, value: float | Sequence[float]) -> torch.Tensor:
        """A library prior buffer: a scalar, or one value per batch category."""
        n_batch = self.config.n_batch
        if n_batch == 0:
            return torch.tensor(float(value))
        out = torch.tensor(value, dtype=torch.get_default_dtype()).reshape(-1)
        if out.numel() == 1:
            out = out.expand(n_batch).clone()
        if out.numel() != n_batch:
            raise ValueError(f"library prior: {out.numel()} values for {n_batch} batches")
        return out

    def covariate_features(self, c: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """One-hot covariates, shape (cells, sum of ``n_categories``), in ``like``'s dtype.

        Parameters
        ----------
        c
            Integer codes, shape (cells, covariates).
        like
            A tensor whose dtype the result takes.

        Raises
        ------
        ValueError
            When the model is conditional and ``c`` is missing or has the wrong shape.
        """
        cats = self.config.n_categories
        if c is None:
            raise ValueError(
                f"this model is conditioned on {len(cats)} covariate(s) (the batch first): "
                "pass their integer codes c (cells x covariates)"
            )
        if c.ndim != 2 or c.shape[1] != len(cats):
            raise ValueError(
                f"covariate codes c must have shape (cells, {len(cats)}), got {tuple(c.shape)}"
            )
        parts = [nn.functional.one_hot(c[:, i], k) for i, k in enumerate(cats)]
        return torch.cat(parts, -1).to(like.dtype)

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
    def inference(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> dict[str, torch.distributions.Normal | None]:
        """Posterior ``q(z | x)`` (and ``q(log l | x)`` for a latent library).

        Parameters
        ----------
        x
            Raw counts, cells x genes.
        c
            Covariate codes, cells x covariates (read only with ``encode_covariates``).

        Returns
        -------
        dict
            ``qz``: Normal with batch shape (cells, n_latent); ``ql``: Normal with batch
            shape (cells, 1) or None.
        """
        features = self.encoder_features(x)
        if self.n_covariates and self.config.encode_covariates:
            h = self.encoder(features, self.covariate_features(c, features))
        else:
            h = self.encoder(features)
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
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        x: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | dist.TorchDistribution]:
        """Decode ``z`` into the count distribution ``p(x | z, c)``.

        Parameters
        ----------
        z
            Latent codes, shape (..., cells, n_latent).
        library
            Library sizes, shape (..., cells, 1).
        x
            The counts; needed only by the skip variants, whose decoder also sees them.
        c
            Covariate codes, shape (cells, covariates); needed by a conditional model.

        Returns
        -------
        dict
            ``px``: count distribution with batch shape (..., cells, genes);
            ``log_mu``: log of its mean, the natural output to differentiate.
        """
        cfg = self.config
        batch_shape = z.shape[:-1]
        z_flat = z.reshape(-1, self.n_latent)
        s = None
        if self.n_covariates:
            s = self.covariate_features(c, z)
            s = s.expand(*batch_shape, -1).reshape(-1, self.n_covariates)
        if s is None:
            h = self.decoder(z_flat)
        elif cfg.z_skip:
            h = self.decoder(torch.cat([z_flat, s], -1))
        else:
            h = self.decoder(z_flat, s)
        if cfg.skip != "none":
            if x is None:
                raise ValueError("a decoder with a skip path needs the counts x")
            sx = self.skip_net(torch.log1p(x))
            if cfg.skip_dropout > 0 and self.training:
                keep = torch.rand(sx.shape[0], 1, device=sx.device) >= cfg.skip_dropout
                sx = sx * keep / (1.0 - cfg.skip_dropout)
            sx = sx.expand(*batch_shape, -1).reshape(h.shape)
            if cfg.skip == "gated":
                sx = torch.sigmoid(self.skip_gate(z_flat)) * sx
            h = h + sx
        logits = self.px_rho(h)
        if cfg.z_skip and cfg.decoder_layers > 0:
            logits = logits + self.px_rho_z(z_flat)
        if s is not None and hasattr(self, "px_rho_cov"):
            logits = logits + self.px_rho_cov(s)
        log_rho = torch.log_softmax(logits, dim=-1).reshape(*batch_shape, self.n_input)
        log_mu = log_rho + torch.log(library)
        log_theta = self.log_theta(h, batch_shape, c)
        zi_logits = None
        if self.config.likelihood == "zinb":
            zi_logits = self.px_zi(h).reshape(*batch_shape, self.n_input)
        px = count_distribution(self.config.likelihood, log_mu, log_theta, zi_logits)
        return {"px": px, "log_mu": log_mu}

    def log_theta(
        self,
        h: torch.Tensor | None = None,
        batch_shape: torch.Size | None = None,
        c: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Log inverse dispersion: fixed, per gene, per gene and batch, or per gene and cell.

        Parameters
        ----------
        h, batch_shape
            The decoder's last hidden layer and the leading shape of ``z``: a per-cell
            dispersion (``"gene-cell"``) needs them, else None is returned.
        c
            Covariate codes (cells x covariates): a per-batch dispersion is then returned
            per cell (cells x genes); without them the table (batches x genes).

        Returns
        -------
        torch.Tensor or None
            None for a Poisson likelihood.
        """
        cfg = self.config
        if cfg.likelihood == "poisson":
            return None
        if cfg.theta > 0:
            return self.library_log_mean.new_tensor(cfg.theta).log().expand(cfg.n_input)
        if self.theta_per_batch:
            return self.px_log_theta if c is None else self.px_log_theta[c[:, 0]]
        if cfg.dispersion in ("gene", "gene-batch"):
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

    def prior_l(self, n: int, c: torch.Tensor | None = None) -> torch.distributions.Normal:
        """Log-normal library prior (on the log scale), batch shape (n, 1).

        With a batch (``config.n_batch > 0``) each cell gets its batch's prior, read from
        the codes ``c``.
        """
        loc, scale = self._library_loc_scale(c)
        return torch.distributions.Normal(loc, scale, validate_args=False).expand((n, 1))

    def library_prior(self, n: int, c: torch.Tensor | None = None) -> dist.Normal:
        """The Pyro library prior of :meth:`model` (per batch with a batch), batch shape (n, 1)."""
        return dist.Normal(*self._library_loc_scale(c)).expand([n, 1])

    def _library_loc_scale(self, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of the log-library prior: per cell's batch with a batch."""
        if self.config.n_batch:
            b = self._batch_codes(c)
            return self.library_log_mean[b].unsqueeze(-1), self.library_log_scale[b].unsqueeze(-1)
        return self.library_log_mean, self.library_log_scale

    def _batch_codes(self, c: torch.Tensor | None) -> torch.Tensor:
        """The batch codes (the first column of ``c``), checked."""
        if c is None:
            raise ValueError("this model has a library prior per batch: pass the codes c")
        return c[:, 0]

    # ------------------------------------------------------------- Pyro programs
    def model(self, x: torch.Tensor, c: torch.Tensor | None = None, kl_weight: float = 1.0) -> None:
        """Pyro model ``p(x, z | c)``; ``kl_weight`` scales the latent site (KL annealing).

        Parameters
        ----------
        x
            Counts, cells x genes.
        c
            Covariate codes, cells x covariates (None for an unconditional model).
        kl_weight
            Scale of the latent site ``z``.
        """
        check_codes(c)
        pyro.module("scvae", self)
        n = x.shape[0]
        with pyro.plate("cells", n):
            with poutine.scale(scale=max(kl_weight, MIN_KL_WEIGHT)):
                z = pyro.sample(
                    "z", dist.Normal(0.0, x.new_ones(())).expand([n, self.n_latent]).to_event(1)
                )
            if self.config.library == "latent":
                log_l = pyro.sample("l", self.library_prior(n, c).to_event(1))
                library = log_l.exp()
            else:
                library = self.library(x)
            px = self.generative(z, library, x, c)["px"]
            pyro.sample("x", px.to_event(1), obs=x)

    def guide(self, x: torch.Tensor, c: torch.Tensor | None = None, kl_weight: float = 1.0) -> None:
        """Pyro guide ``q(z | x, c)``, same signature and latent sites as :meth:`model`."""
        check_codes(c)
        pyro.module("scvae", self)
        n = x.shape[0]
        q = self.inference(x, c)
        with pyro.plate("cells", n):
            with poutine.scale(scale=max(kl_weight, MIN_KL_WEIGHT)):
                pyro.sample("z", dist.Normal(q["qz"].loc, q["qz"].scale).to_event(1))
            if q["ql"] is not None:
                pyro.sample("l", dist.Normal(q["ql"].loc, q["ql"].scale).to_event(1))
