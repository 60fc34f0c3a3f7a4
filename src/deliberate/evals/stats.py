"""Confidence intervals that resample tasks, and paired comparisons between strategies.

Every interval here is a percentile bootstrap over tasks (the unit that varies
between suites), drawn from a seeded generator so a report is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Estimate", "bootstrap", "mean_ci", "paired_difference", "sign_test"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with a two-sided interval at ``level``."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n,
                "level": self.level}


def _percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 1])."""
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def bootstrap(n: int, statistic: Callable[[Sequence[int]], float], *, resamples: int = 2000,
              level: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile bootstrap of ``statistic`` over index resamples of ``n`` units.

    ``statistic`` gets a list of unit indices (with repeats); the point estimate is
    its value on ``range(n)``. With one unit or fewer the interval is the point.
    """
    if n < 1:
        raise ValueError("a bootstrap needs at least one unit")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    point = statistic(range(n))
    if n == 1:
        return Estimate(point, point, point, n, level)
    rng = random.Random(seed)
    draws = sorted(statistic([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    alpha = (1 - level) / 2
    return Estimate(point, _percentile(draws, alpha), _percentile(draws, 1 - alpha), n, level)


def mean_ci(values: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
            seed: int = 0) -> Estimate:
    """The mean of per-task values with a bootstrap interval."""
    xs = list(values)
    return bootstrap(len(xs), lambda idx: sum(xs[i] for i in idx) / len(idx),
                     resamples=resamples, level=level, seed=seed)


def paired_difference(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000,
                      level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``a - b`` over the same tasks, resampling tasks (pairs stay together)."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], resamples=resamples,
                   level=level, seed=seed)


def sign_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact sign test p-value on paired values (ties dropped)."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} and {len(b)}")
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    losses = sum(x < y for x, y in zip(a, b, strict=True))
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
