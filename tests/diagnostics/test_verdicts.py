"""The verdict on hand-made measures: healthy, each kind of partial collapse, collapsed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scvae.diagnostics.verdicts import VerdictThresholds, is_collapsed, verdict


def _verdict(**overrides):
    args = {
        "mi": 2.0,
        "kl_per_dim": [1.0, 0.8, 0.6],
        "active_mask": [True, True, True],
        "sensitivity_per_dim": [5.0, 3.0, 1.0],
        "mi_per_dim": [0.9, 0.7, 0.5],
        "mi_cap": math.log(5000),
    }
    args.update(overrides)
    return verdict(**args)


def test_verdict_cases():
    assert _verdict()[0] == "healthy"
    label, reason = _verdict(active_mask=[True, True, False], mi_per_dim=[0.9, 0.7, 0.0])
    assert label == "partial collapse" and "inactive dimensions [2]" in reason
    # KL and information in dimension 1, but the decoder does not listen to it.
    label, reason = _verdict(sensitivity_per_dim=[5.0, 1e-6, 1.0])
    assert label == "partial collapse" and "decoder ignores" in reason and "[1]" in reason
    # Free bits: KL in every dimension, means vary a bit, but dim 2 holds no information.
    label, reason = _verdict(mi_per_dim=[0.9, 0.7, 0.001])
    assert label == "partial collapse" and "noise" in reason
    label, reason = _verdict(mi=0.02)
    assert label == "collapsed" and "I(x;z)" in reason
    label, reason = _verdict(sensitivity_per_dim=[1e-5, 1e-6, 0.0])
    assert label == "collapsed" and "decoder ignores z" in reason
    assert _verdict(active_mask=[False] * 3)[0] == "collapsed"
    assert _verdict(kl_per_dim=[0.01, 0.01, 0.01])[0] == "collapsed"
    assert _verdict(mi=float("nan"))[0] == "collapsed"
    strict = VerdictThresholds(min_mi=5.0)
    assert _verdict(thresholds=strict)[0] == "collapsed"
    assert "near its cap" in _verdict(mi=8.0)[1]


def test_a_recorded_verdict_decides_whatever_the_scalars_say():
    # Diagnostics run with their own thresholds: the table must not overrule them.
    assert is_collapsed(" Collapsed", mi=3.0, kl_total=9.0, active_units=5) is True
    assert is_collapsed("partial collapse", mi=0.05, kl_total=0.05, active_units=0) is False
    assert is_collapsed("healthy") is False


@pytest.mark.parametrize(
    ("measures", "collapsed"),
    [
        ({"mi": 2.0, "kl_total": 3.0, "active_units": 2}, False),
        ({"mi": 0.05, "kl_total": 3.0, "active_units": 2}, True),
        ({"mi": 2.0, "kl_total": 0.05, "active_units": 2}, True),
        ({"mi": 2.0, "kl_total": 3.0, "active_units": 0}, True),
        ({"mi": math.nan, "kl_total": math.nan, "active_units": math.nan}, False),
        ({}, False),
    ],
)
def test_without_a_verdict_the_verdicts_scalar_tests_decide(measures, collapsed):
    for missing in (None, "", math.nan):
        assert is_collapsed(missing, **measures) is collapsed


def test_the_scalar_tests_are_those_of_the_verdict():
    # Decoder listening to every dimension: only the scalar tests can fail.
    for mi, kl, active in [
        (2.0, [1.0, 0.8, 0.6], [True] * 3),
        (0.09, [1.0, 0.8, 0.6], [True] * 3),
        (2.0, [0.04, 0.03, 0.02], [True] * 3),
        (2.0, [1.0, 0.8, 0.6], [False] * 3),
    ]:
        label = _verdict(mi=mi, kl_per_dim=kl, active_mask=active)[0]
        flag = is_collapsed(None, mi=mi, kl_total=sum(kl), active_units=sum(active))
        assert flag is (label == "collapsed")
    strict = VerdictThresholds(min_kl_total=5.0)
    assert is_collapsed(None, mi=2.0, kl_total=2.4, active_units=3, thresholds=strict) is True


def test_is_collapsed_takes_one_value_per_run():
    verdicts = pd.Series(["collapsed", "healthy", None, np.nan, ""])
    out = is_collapsed(
        verdicts,
        mi=pd.Series([3.0, 3.0, 0.01, 3.0, math.nan]),
        kl_total=[5.0, 5.0, 5.0, 0.01, math.nan],
        active_units=np.array([4, 0, 4, 4, 0]),
    )
    assert isinstance(out, np.ndarray) and out.tolist() == [True, False, True, True, True]
