"""KL-weight schedules are pure functions of the step."""

from __future__ import annotations

import pytest

from scvae.training.schedules import KLSchedule


def test_constant():
    s = KLSchedule("constant", beta=4.0, total_steps=100)
    assert [s(i) for i in (0, 50, 99, 500)] == [4.0] * 4
    assert s.warmup_steps == 0


def test_linear_reaches_beta_at_the_end_of_the_warmup_and_stays():
    s = KLSchedule("linear", beta=2.0, total_steps=1000, warmup_fraction=0.4)
    assert s(0) == 0.0
    assert s(200) == pytest.approx(1.0)
    assert s(399) == pytest.approx(2.0 * 399 / 400)
    assert s(400) == 2.0
    assert s(10_000) == 2.0  # beyond the planned steps: full weight, never below
    assert s.warmup_steps == 400
    values = [s(i) for i in range(1000)]
    assert values == sorted(values)


def test_step_based_warmup_does_not_depend_on_dataset_size():
    # Same fraction of training -> same weight, whatever the steps per epoch.
    small = KLSchedule("linear", total_steps=10 * 400, warmup_fraction=0.5)
    large = KLSchedule("linear", total_steps=1000 * 400, warmup_fraction=0.5)
    assert small(10 * 100) == pytest.approx(large(1000 * 100)) == pytest.approx(0.5)


def test_sigmoid_is_monotone_and_centred():
    s = KLSchedule("sigmoid", beta=1.0, total_steps=100, warmup_fraction=1.0)
    values = [s(i) for i in range(100)]
    assert values == sorted(values)
    assert s(50) == pytest.approx(0.5)
    assert values[0] < 0.01 and values[-1] > 0.99


def test_cyclical_follows_fu_et_al():
    s = KLSchedule("cyclical", beta=1.0, total_steps=400, n_cycles=4, ratio=0.5)
    # Each 100-step cycle: ramp over 50 steps, then 1.
    assert s(0) == 0.0 and s(25) == pytest.approx(0.5) and s(50) == 1.0 and s(99) == 1.0
    assert s(100) == 0.0 and s(125) == pytest.approx(0.5) and s(399) == 1.0
    assert s(400) == 1.0
    assert s.warmup_steps == 350


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "cosine"}, {"beta": -1.0}, {"warmup_fraction": 1.5}, {"n_cycles": 0}, {"ratio": 0.0}],
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        KLSchedule(**kwargs)
