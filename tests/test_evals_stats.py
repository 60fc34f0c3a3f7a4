"""The bootstrap and paired statistics, against values known in closed form."""

from __future__ import annotations

import math

import pytest

from deliberate.evals.stats import bootstrap, mean_ci, paired_difference, sign_test


def test_mean_ci_brackets_the_mean_and_narrows_with_more_tasks() -> None:
    small = mean_ci([1.0, 0.0] * 10, seed=1)
    large = mean_ci([1.0, 0.0] * 500, seed=1)
    assert small.value == large.value == 0.5
    assert small.low < 0.5 < small.high
    assert (large.high - large.low) < (small.high - small.low) / 3
    # the bootstrap interval of a proportion is close to the normal one: 1.96*sqrt(pq/n)
    half = 1.96 * math.sqrt(0.25 / 1000)
    assert large.low == pytest.approx(0.5 - half, abs=0.01)
    assert large.high == pytest.approx(0.5 + half, abs=0.01)


def test_constant_values_have_a_zero_width_interval_and_one_unit_is_its_point() -> None:
    e = mean_ci([0.7] * 12)
    assert (e.low, e.value, e.high) == pytest.approx((0.7, 0.7, 0.7))
    one = mean_ci([0.3])
    assert (one.low, one.high, one.n) == (0.3, 0.3, 1)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap(3, lambda idx: 0.0, level=1.5)


def test_same_seed_same_interval_other_seed_may_differ() -> None:
    xs = [float(i % 3 == 0) for i in range(40)]
    assert mean_ci(xs, seed=4) == mean_ci(xs, seed=4)


def test_paired_difference_keeps_pairs_together() -> None:
    # a solves every task b solves, plus 6 of 40 more: each resample keeps that pairing,
    # so the difference never goes negative, although both accuracies vary widely
    b = [1.0, 0.0] * 20
    a = list(b)
    for i in (1, 3, 5, 7, 9, 11):
        a[i] = 1.0
    assert sum(a) - sum(b) == 6
    d = paired_difference(a, b)
    assert d.value == pytest.approx(6 / 40)
    assert 0 < d.low < d.value < d.high
    # a single accuracy interval is wider than the whole gap: pairing is what resolves it
    assert mean_ci(b).high - mean_ci(b).low > d.value
    same = paired_difference(a, a)
    assert (same.low, same.high) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 0.0])


def test_sign_test_matches_the_binomial_tail() -> None:
    assert sign_test([1.0] * 10, [0.0] * 10) == pytest.approx(2 / 1024)
    assert sign_test([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0
    assert sign_test([1.0, 1.0], [1.0, 1.0]) == 1.0
    # 8 wins, 2 losses: p = 2 * P(X <= 2 | n=10) = 2 * 56/1024
    assert sign_test([1.0] * 8 + [0.0] * 2, [0.0] * 8 + [1.0] * 2) == pytest.approx(112 / 1024)
