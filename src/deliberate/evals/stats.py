"""Confidence intervals that resample tasks, and paired comparisons between strategies.

Every interval here is a percentile bootstrap over tasks (the unit that varies
between suites), drawn from a seeded generator so a report is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Estimate", "Resampler", "bootstrap", "mean_ci", "paired_difference", "pass_at_k",
           "ratio_ci", "sign_test"]


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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` graded samples of which ``c`` are right (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``: the chance that ``k`` samples drawn without replacement
    from the ``n`` include a right one. Computed as ``1 - prod_{i=n-c+1..n} (1 - k/i)``,
    which stays accurate where the binomials overflow floats.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n (n={n}, c={c})")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n: {k} of {n} samples")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _draw(n: int, resamples: int, seed: int) -> list[list[int]]:
    """The index resamples :func:`bootstrap` draws for ``n`` units under ``seed``."""
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)]


def _ratio(num: Sequence[float], den: Sequence[float], draws: Sequence[Sequence[int]],
           level: float) -> Estimate:
    if len(num) != len(den):
        raise ValueError(f"numerators and denominators differ in length: {len(num)} and "
                         f"{len(den)}")
    if not num:
        raise ValueError("a bootstrap needs at least one unit")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    total = sum(den)
    if total == 0:
        raise ValueError("the denominators sum to 0: the ratio is undefined")
    point = sum(num) / total
    n = len(num)
    if n == 1:
        return Estimate(point, point, point, n, level)
    ratios: list[float] = []
    for idx in draws:
        d = sum(den[i] for i in idx)
        if d:
            ratios.append(sum(num[i] for i in idx) / d)
    ratios.sort()
    alpha = (1 - level) / 2
    return Estimate(point, _percentile(ratios, alpha), _percentile(ratios, 1 - alpha), n, level)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], *,
             resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """``sum(num) / sum(den)`` over tasks with a bootstrap interval resampling tasks.

    For ratios of totals (tokens per solved task, micro-averaged precision). Resamples
    whose denominator sums to 0 have no ratio and are left out of the percentiles.
    """
    num, den = list(numerators), list(denominators)
    draws = _draw(len(num), resamples, seed) if len(num) > 1 else []
    return _ratio(num, den, draws, level)


class Resampler:
    """Draws the index resamples once per number of units and reuses them.

    Drawing dominates the cost of an interval; a report computes a dozen statistics
    over the same tasks. The draws are those of :func:`bootstrap` under the same seed,
    so :meth:`mean` equals :func:`mean_ci` and :meth:`ratio` equals :func:`ratio_ci`,
    only cheaper. Holds its cache: make one per report, not a shared one.
    """

    def __init__(self, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> None:
        if not 0 < level < 1:
            raise ValueError("level must be in (0, 1)")
        self.resamples = resamples
        self.level = level
        self.seed = seed
        self._draws: dict[int, list[list[int]]] = {}

    def draws(self, n: int) -> list[list[int]]:
        if n not in self._draws:
            self._draws[n] = _draw(n, self.resamples, self.seed)
        return self._draws[n]

    def mean(self, values: Sequence[float]) -> Estimate:
        """As :func:`mean_ci`."""
        xs = list(values)
        n = len(xs)
        if n < 1:
            raise ValueError("a bootstrap needs at least one unit")
        point = sum(xs) / n
        if n == 1:
            return Estimate(point, point, point, n, self.level)
        means = sorted(sum(xs[i] for i in idx) / n for idx in self.draws(n))
        alpha = (1 - self.level) / 2
        return Estimate(point, _percentile(means, alpha), _percentile(means, 1 - alpha), n,
                        self.level)

    def ratio(self, numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
        """As :func:`ratio_ci`."""
        num = list(numerators)
        return _ratio(num, list(denominators), self.draws(len(num)) if len(num) > 1 else [],
                      self.level)

    def paired_difference(self, a: Sequence[float], b: Sequence[float]) -> Estimate:
        """As :func:`paired_difference`."""
        if len(a) != len(b):
            raise ValueError(f"paired values differ in length: {len(a)} and {len(b)}")
        return self.mean([x - y for x, y in zip(a, b, strict=True)])
