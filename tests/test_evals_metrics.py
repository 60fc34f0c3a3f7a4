"""Run metrics, pass@k, ratio intervals and paired comparisons against known answers."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import pytest

from deliberate.evals.metrics import (
    CriticVerdict,
    RunData,
    TaskOutcome,
    compare_runs,
    critic_confusions,
    default_ks,
    load_run,
    pareto_front,
    run_metrics,
)
from deliberate.evals.stats import (
    Resampler,
    mean_ci,
    paired_difference,
    pass_at_k,
    ratio_ci,
    sign_test,
)
from deliberate.store import Store
from deliberate.tree import AttemptRecord, JudgementRecord, NodeRecord, RunRecord

# ------------------------------------------------------------------ pass@k


@pytest.mark.parametrize(("k", "expected"), [(1, 0.4), (2, 0.7), (3, 0.9), (4, 1.0), (5, 1.0)])
def test_pass_at_k_by_hand_n5_c2(k: int, expected: float) -> None:
    # 1 - C(3,k)/C(5,k): k=1: 1-3/5; k=2: 1-3/10; k=3: 1-1/10; k>=4: no all-wrong draw
    assert pass_at_k(5, 2, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edges_and_errors() -> None:
    assert all(pass_at_k(7, 0, k) == 0.0 for k in range(1, 8))
    assert all(pass_at_k(7, 7, k) == 1.0 for k in range(1, 8))
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(5, 2, 0)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(5, -1, 1)


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_sample() -> None:
    # the definition, by enumerating every subset, for every small case
    for n in range(1, 8):
        for c in range(n + 1):
            labels = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(labels, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)


def test_pass_at_k_stays_exact_where_binomials_are_huge() -> None:
    # C(1000, 500) has ~300 digits: the product form must agree with exact rationals
    for n, c, k in ((1000, 3, 500), (1000, 1, 1), (200, 17, 100), (5000, 2, 10)):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ bootstrap intervals


def test_bootstrap_of_two_units_covers_the_whole_range() -> None:
    # resampled means of [0, 1] are 0, 1/2, 1 with chances 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% percentiles are the extremes
    e = mean_ci([0.0, 1.0], seed=5)
    assert (e.value, e.low, e.high, e.n) == (0.5, 0.0, 1.0, 2)


def _binomial_quantile(n: int, p: float, q: float) -> float:
    acc = 0.0
    for j in range(n + 1):
        acc += math.comb(n, j) * p**j * (1 - p) ** (n - j)
        if acc >= q:
            return j / n
    return 1.0


def test_bootstrap_of_a_proportion_matches_the_binomial_quantiles() -> None:
    # resampling 50 tasks of which 15 are solved draws Binomial(50, 0.3)/50 exactly, so
    # the percentile interval is that distribution's 2.5% and 97.5% quantiles
    xs = [1.0] * 15 + [0.0] * 35
    e = mean_ci(xs, resamples=20000, seed=11)
    assert e.value == pytest.approx(0.3)
    assert e.low == pytest.approx(_binomial_quantile(50, 0.3, 0.025), abs=0.021)
    assert e.high == pytest.approx(_binomial_quantile(50, 0.3, 0.975), abs=0.021)


def test_ratio_ci_known_cases() -> None:
    # a constant ratio has no spread whatever the resample
    e = ratio_ci([2.0, 6.0, 10.0, 4.0], [1.0, 3.0, 5.0, 2.0], seed=1)
    assert (e.value, e.low, e.high) == pytest.approx((2.0, 2.0, 2.0))
    # a ratio of totals, not a mean of ratios: (1 + 9) / (1 + 3) = 2.5, not (1 + 3) / 2
    assert ratio_ci([1.0, 9.0], [1.0, 3.0]).value == pytest.approx(2.5)
    tokens = [100.0, 300.0, 200.0, 400.0]
    solved = [1.0, 0.0, 1.0, 0.0]
    assert ratio_ci(tokens, solved).value == pytest.approx(1000.0 / 2.0)
    with pytest.raises(ValueError, match="undefined"):
        ratio_ci([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="differ in length"):
        ratio_ci([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        ratio_ci([], [])
    one = ratio_ci([3.0], [2.0])
    assert (one.low, one.value, one.high) == (1.5, 1.5, 1.5)


def test_ratio_ci_leaves_out_resamples_without_a_denominator() -> None:
    # one solved task among 10: about a third of the resamples solve none and have no
    # ratio; the others give 100 / (times the solved task was drawn), at least 10
    tokens = [10.0] * 10
    solved = [1.0] + [0.0] * 9
    e = ratio_ci(tokens, solved, seed=3)
    assert e.value == 100.0
    assert math.isfinite(e.high) and e.low >= 10.0
    assert e.low <= e.value <= e.high


def test_resampler_reproduces_the_one_off_functions_exactly() -> None:
    rng = random.Random(0)
    rs = Resampler(resamples=500, seed=7)
    for n in (1, 2, 9, 40):
        xs = [rng.random() for _ in range(n)]
        ys = [float(rng.random() < 0.5) for _ in range(n)]
        assert rs.mean(xs) == mean_ci(xs, resamples=500, seed=7)
        assert rs.paired_difference(xs, ys) == paired_difference(xs, ys, resamples=500, seed=7)
        if sum(ys):
            assert rs.ratio(xs, ys) == ratio_ci(xs, ys, resamples=500, seed=7)
    with pytest.raises(ValueError, match="level"):
        Resampler(level=1.0)


# ------------------------------------------------------------------ paired comparisons


def _run(run_id: str, outcomes: list[TaskOutcome]) -> RunData:
    return RunData(RunRecord(id=run_id, config={}), tuple(outcomes))


def _outcomes(correct: Sequence[bool | None], tokens: list[int] | None = None,
              prefix: str = "t") -> list[TaskOutcome]:
    toks = tokens or [100] * len(correct)
    return [TaskOutcome(f"{prefix}{i:03d}", "done" if c is not None else "failed", c,
                        prompt_tokens=t // 2, completion_tokens=t - t // 2, calls=1)
            for i, (c, t) in enumerate(zip(correct, toks, strict=True))]


def test_paired_comparison_with_a_known_difference() -> None:
    # b solves 20 of 40; a solves the same 20 and 10 more: a - b = 10/40 exactly, every
    # difference favours a, so the sign test gives 2 * 0.5**10
    b = [i % 2 == 0 for i in range(40)]
    a = list(b)
    for i in range(1, 21, 2):
        a[i] = True
    cmp = compare_runs(_run("a", _outcomes(a)), _run("b", _outcomes(b)), seed=2)
    assert cmp is not None
    assert (cmp.n, cmp.wins, cmp.losses, cmp.ties) == (40, 10, 0, 30)
    assert (cmp.a_mean, cmp.b_mean) == (0.75, 0.5)
    assert cmp.difference.value == pytest.approx(0.25)
    assert 0 < cmp.difference.low < 0.25 < cmp.difference.high
    assert cmp.p_value == pytest.approx(2 / 1024)
    back = compare_runs(_run("b", _outcomes(b)), _run("a", _outcomes(a)), seed=2)
    assert back is not None and back.difference.value == pytest.approx(-0.25)
    assert back.difference.high < 0 and back.p_value == cmp.p_value


def test_paired_comparison_of_equal_strategies_finds_nothing() -> None:
    # a and b each win 6 tasks the other loses: difference 0, sign test p = 1
    b = [True] * 6 + [False] * 6 + [True] * 10 + [False] * 8
    a = [False] * 6 + [True] * 6 + [True] * 10 + [False] * 8
    cmp = compare_runs(_run("a", _outcomes(a)), _run("b", _outcomes(b)))
    assert cmp is not None
    assert cmp.difference.value == 0.0 and cmp.difference.low < 0 < cmp.difference.high
    assert cmp.p_value == 1.0 and (cmp.wins, cmp.losses) == (6, 6)
    same = compare_runs(_run("a", _outcomes(a)), _run("a2", _outcomes(a)))
    assert same is not None and (same.difference.low, same.difference.high) == (0.0, 0.0)


def test_paired_comparison_uses_only_tasks_both_runs_measured() -> None:
    a = _outcomes([True, True, None, False, True])  # t002 failed: no grade
    b = _outcomes([False, True, True, False])  # no t004
    cmp = compare_runs(_run("a", a), _run("b", b))
    assert cmp is not None and cmp.n == 3  # t000, t001, t003
    assert cmp.difference.value == pytest.approx(1 / 3)
    tok = compare_runs(_run("a", _outcomes([True, False], [300, 500])),
                       _run("b", _outcomes([True, True], [100, 200])), metric="tokens")
    assert tok is not None and tok.difference.value == pytest.approx((200 + 300) / 2)
    assert compare_runs(_run("a", a), _run("c", _outcomes([True], prefix="x"))) is None


def test_paired_interval_covers_a_known_population_difference() -> None:
    # tasks from a population where a beats b on 15% and loses on 5%: the true
    # difference is 0.10. A 95% interval should cover it in about 95% of samples, and
    # the sign test should find it with 200 tasks almost always.
    covered = significant = 0
    trials = 40
    for seed in range(trials):
        rng = random.Random(1000 + seed)
        a: list[float] = []
        b: list[float] = []
        for _ in range(200):
            u = rng.random()
            pair = (1.0, 0.0) if u < 0.15 else (0.0, 1.0) if u < 0.20 else \
                (1.0, 1.0) if u < 0.70 else (0.0, 0.0)
            a.append(pair[0])
            b.append(pair[1])
        d = Resampler(resamples=400, seed=seed).paired_difference(a, b)
        covered += d.low <= 0.10 <= d.high
        significant += sign_test(a, b) < 0.05
    assert covered / trials >= 0.85
    assert significant / trials >= 0.9


# ------------------------------------------------------------------ run metrics


def test_run_metrics_on_constructed_outcomes() -> None:
    outs = [
        TaskOutcome("a", "done", True, 100, 50, calls=3, cost=0.01, latency_s=1.0,
                    candidates=4, candidates_correct=2, detection=(1, 0, 1)),
        TaskOutcome("b", "done", False, 200, 100, calls=5, cost=0.02, latency_s=2.0,
                    candidates=4, candidates_correct=0, detection=(0, 2, 1)),
        TaskOutcome("c", "budget_limited", True, 50, 50, calls=1, cost=0.005,
                    latency_s=0.5, candidates=5, candidates_correct=5, detection=(2, 1, 0)),
        TaskOutcome("d", "failed", None, 10, 0, calls=1, cost=0.001),
        TaskOutcome("e", "running", None, 0, 0),
    ]
    m = run_metrics(_run("r", outs), resamples=300)
    assert (m.tasks, m.finished, m.graded, m.solved, m.failed, m.budget_limited) == \
        (5, 4, 3, 2, 1, 1)
    assert m.accuracy is not None and m.accuracy.value == pytest.approx(2 / 3)
    assert m.sample_accuracy is not None and m.sample_accuracy.value == pytest.approx(
        (0.5 + 0.0 + 1.0) / 3)
    assert m.oracle is not None and m.oracle.value == pytest.approx(2 / 3)
    # k runs to the fewest candidates (4); pass@1 is the sample accuracy
    assert list(m.pass_at_k) == [1, 2, 4]
    assert m.pass_at_k[1].value == pytest.approx(m.sample_accuracy.value)
    assert m.pass_at_k[2].value == pytest.approx(
        (pass_at_k(4, 2, 2) + 0.0 + 1.0) / 3)
    assert m.pass_at_k[4].value == pytest.approx(m.oracle.value)
    # micro-averaged: tp 3, fp 3, fn 2
    assert m.precision is not None and m.precision.value == pytest.approx(3 / 6)
    assert m.recall is not None and m.recall.value == pytest.approx(3 / 5)
    assert m.f1 is not None and m.f1.value == pytest.approx(6 / 11)
    assert m.false_positives is not None and m.false_positives.value == pytest.approx(1.0)
    # consumption counts every finished task, the failed one too
    assert m.tokens is not None and m.tokens.value == pytest.approx((150 + 300 + 100 + 10) / 4)
    assert m.calls is not None and m.calls.value == pytest.approx(10 / 4)
    assert m.tokens_per_solved is not None and m.tokens_per_solved.value == pytest.approx(
        560 / 2)
    assert m.cost_per_solved is not None and m.cost_per_solved.value == pytest.approx(
        0.036 / 2)
    assert m.priced
    assert m.latency_s is not None and m.latency_s.value == pytest.approx(3.5 / 4)
    assert m.as_dict()["pass_at_k"]["2"]["value"] == m.pass_at_k[2].value


def test_run_metrics_without_grades_or_candidates() -> None:
    outs = [TaskOutcome("a", "done", None, 10, 10), TaskOutcome("b", "done", None, 30, 10)]
    m = run_metrics(_run("r", outs))
    assert m.accuracy is None and m.oracle is None and m.pass_at_k == {}
    assert m.tokens_per_solved is None and m.precision is None and not m.priced
    assert m.tokens is not None and m.tokens.value == 30.0
    none_solved = run_metrics(_run("r", _outcomes([False, False])))
    assert none_solved.accuracy is not None and none_solved.accuracy.value == 0.0
    assert none_solved.tokens_per_solved is None


def test_default_ks() -> None:
    assert default_ks(1) == (1,)
    assert default_ks(5) == (1, 2, 4, 5)
    assert default_ks(8) == (1, 2, 4, 8)
    assert default_ks(10) == (1, 2, 4, 8, 10)


def test_critic_confusion_counts_and_rates() -> None:
    # 10 right candidates: critic says correct on 8, incorrect on 1, unreadable on 1;
    # 5 wrong ones: incorrect on 4, correct on 1
    vs = ([CriticVerdict(f"t{i}", "judge", "model:m", "correct", True) for i in range(8)]
          + [CriticVerdict("t8", "judge", "model:m", "incorrect", True),
             CriticVerdict("t9", "judge", "model:m", "parse_failure", True)]
          + [CriticVerdict(f"w{i}", "judge", "model:m", "incorrect", False) for i in range(4)]
          + [CriticVerdict("w4", "judge", "model:m", "correct", False),
             CriticVerdict("w4", "critic", "model:other", "incorrect", False)])
    confs = {c.role: c for c in critic_confusions(vs, resamples=300)}
    j = confs["judge"]
    assert j.total == 15 and j.row_total("correct") == 10
    assert (j.count("correct", "correct"), j.count("correct", "incorrect"),
            j.count("correct", "parse_failure")) == (8, 1, 1)
    assert (j.count("incorrect", "incorrect"), j.count("incorrect", "correct")) == (4, 1)
    assert j.specificity is not None and j.specificity.value == pytest.approx(0.8)
    assert j.sensitivity is not None and j.sensitivity.value == pytest.approx(0.8)
    assert j.accuracy is not None and j.accuracy.value == pytest.approx(12 / 15)
    c = confs["critic"]
    assert c.total == 1 and c.specificity is None
    assert c.sensitivity is not None and c.sensitivity.value == 1.0


def test_pareto_front() -> None:
    pts = [(100.0, 0.5), (200.0, 0.7), (150.0, 0.4), (300.0, 0.7), (400.0, 0.9),
           (100.0, 0.5), (50.0, float("nan"))]
    # (150, .4) is beaten by (100, .5); (300, .7) by (200, .7); equal twins both stay
    assert pareto_front(pts) == [True, True, False, False, True, True, False]
    assert pareto_front([]) == []


# ------------------------------------------------------------------ reading a stored run


async def test_load_run_reads_outcomes_and_joins_critic_verdicts_to_grades(
        tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "s.db"))
    await store.start()
    try:
        await store.create_run(RunRecord(id="r", config={"strategy": "best_of_n"}))
        for t in ("t1", "t2"):
            store.put_attempt(AttemptRecord(
                run_id="r", task_id=t, status="done", correct=t == "t1", prompt_tokens=10,
                completion_tokens=5, calls=2,
                stats={"candidates": 2, "candidates_correct": int(t == "t1"),
                       "metrics": {"tp": 1, "fp": 0, "fn": 0}}))
            root = NodeRecord(id=f"{t}-root", run_id="r", task_id=t, parent_id=None,
                              role="root", operator="root")
            store.put_node(root)
            for i, right in enumerate((True, False)):
                node = NodeRecord(id=f"{t}-n{i}", run_id="r", task_id=t, parent_id=root.id,
                                  role="generator", operator="generate", text="x")
                store.put_node(node)
                grade = "correct" if right and t == "t1" else "incorrect"

                def judge(role: str, source: str, verdict: str, node_id: str = node.id,
                          task: str = t) -> JudgementRecord:
                    return JudgementRecord(id=f"{node_id}-{role}-{source}", run_id="r",
                                           task_id=task, node_id=node_id, source=source,
                                           role=role, verdict=verdict)

                store.put_judgement(judge("grader", "verifier:math", grade))
                store.put_judgement(judge("judge", "model:m", "correct"))
                # a deterministic verifier is not a critic; a pairwise verdict is not one
                store.put_judgement(judge("verifier", "verifier:math", grade))
                store.put_judgement(judge("pairwise", "model:m", "a"))
        # a judgement on a node nobody graded is not counted
        store.put_judgement(JudgementRecord(id="loose", run_id="r", task_id="t1",
                                            node_id="t1-root", source="model:m",
                                            role="judge", verdict="parse_failure"))
        await store.flush()
        data = await load_run(store, "r")
        assert data is not None
        assert [o.task_id for o in data.outcomes] == ["t1", "t2"]
        assert data.outcomes[0].detection == (1, 0, 0) and data.outcomes[0].tokens == 15
        assert sorted((v.task_id, v.verdict, v.truth) for v in data.verdicts) == [
            ("t1", "correct", False), ("t1", "correct", True),
            ("t2", "correct", False), ("t2", "correct", False)]
        assert {v.role for v in data.verdicts} == {"judge"}
        bare = await load_run(store, "r", verdicts=False)
        assert bare is not None and bare.verdicts == ()
        assert await load_run(store, "nope") is None
        paged = await load_run(store, "r", page=1)
        assert paged is not None and [o.task_id for o in paged.outcomes] == ["t1", "t2"]
    finally:
        await store.aclose()
