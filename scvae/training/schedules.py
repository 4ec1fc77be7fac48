"""KL-weight schedules: pure functions of the optimizer step.

Schedules count optimizer steps, not epochs, so that a large dataset (many steps per
epoch) reaches full weight at the same fraction of training as a small one; an
epoch-based warm-up can leave large data below full weight when training stops early
(scvi-tools issue 1569).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")


@dataclass(frozen=True)
class KLSchedule:
    """The KL weight as a function of the step.

    Parameters
    ----------
    kind
        ``"constant"`` (beta throughout), ``"linear"`` (0 -> beta over the first
        ``warmup_fraction`` of the steps), ``"sigmoid"`` (a logistic ramp centred in the
        warm-up window), ``"cyclical"`` (Fu et al. 2019: ``n_cycles`` cycles; in each, a
        linear ramp over the first ``ratio`` of the cycle, then beta).
    beta
        The full weight.
    total_steps
        Planned number of optimizer steps.
    warmup_fraction
        Fraction of ``total_steps`` of the linear and sigmoid warm-ups.
    n_cycles, ratio
        Cyclical schedule: number of cycles M and the ramp's share R of each cycle.
    """

    kind: str = "constant"
    beta: float = 1.0
    total_steps: int = 1
    warmup_fraction: float = 0.0
    n_cycles: int = 4
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown KL schedule {self.kind!r}; expected one of {SCHEDULES}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if not 0 < self.ratio <= 1 or self.n_cycles < 1:
            raise ValueError("cyclical schedule needs n_cycles >= 1 and 0 < ratio <= 1")

    def __call__(self, step: int) -> float:
        """Return the KL weight at ``step`` (0-based)."""
        return self.beta * _shape(self, step)

    @property
    def warmup_steps(self) -> int:
        """The first step from which the weight stays at beta until the end of training."""
        if self.kind == "constant":
            return 0
        if self.kind == "cyclical":
            cycle = self.total_steps / self.n_cycles
            return math.ceil((self.n_cycles - 1) * cycle + self.ratio * cycle)
        return math.ceil(self.warmup_fraction * self.total_steps)


def _shape(s: KLSchedule, step: int) -> float:
    if s.kind == "constant":
        return 1.0
    if s.kind == "cyclical":
        cycle = s.total_steps / s.n_cycles
        tau = (step % cycle) / cycle if step < s.total_steps else 1.0
        return min(1.0, tau / s.ratio)
    warm = s.warmup_fraction * s.total_steps
    if warm <= 0 or step >= warm:
        return 1.0
    if s.kind == "linear":
        return step / warm
    # Logistic ramp from ~0.0025 at the start to ~0.9975 at the end of the window.
    return 1.0 / (1.0 + math.exp(-12.0 * (step / warm - 0.5)))
