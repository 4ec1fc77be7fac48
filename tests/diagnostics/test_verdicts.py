"""The verdict on hand-made measures: healthy, each kind of partial collapse, collapsed."""

from __future__ import annotations

import math

from scvae.diagnostics.verdicts import VerdictThresholds, verdict


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
