"""Critic evaluation, ProcessBench form: loading, metrics, the role code path, sim and server."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deliberate.cli import main
from deliberate.config import BudgetConfig, RetryConfig
from deliberate.errors import DataError, ModelAuthError, ModelConnectionError, ModelResponseError
from deliberate.evals.critics import (
    CriticEvalConfig,
    ProcessBenchItem,
    evaluate_processbench,
    harmonic_mean,
    load_processbench,
    processbench_metrics,
    processbench_suite,
    subsample,
)
from deliberate.models.base import ChatRequest
from deliberate.models.scripted import FunctionModel
from deliberate.models.sim import SimParams
from deliberate.models.sim.handlers.step_critic import STEP_LABELS, labelled_first_wrong
from deliberate.models.sim.server import ServerConfig, SimServer
from tests.conftest import shared_data

PROCESSBENCH = "math/processbench-gsm8k.json.gz"

ROWS: list[dict[str, Any]] = [
    {"id": "a", "generator": "g1", "problem": "Add 2 and 3, then double.",
     "steps": ["2 + 3 = 5", "5 * 2 = 12", "Answer: 12"], "label": 1},
    {"id": "b", "generator": "g1", "problem": "What is 7 - 4?",
     "steps": ["7 - 4 = 3", "Answer: 3"], "label": -1},
    {"id": "c", "generator": "g2", "problem": "Halve 10.",
     "steps": ["10 / 2 = 4", "Answer: 4"], "label": 0},
    {"id": "d", "generator": "g2", "problem": "What is 7 - 4?",
     "steps": ["7 minus 4 leaves 3.", "Answer: 3"], "label": -1},
    {"id": "e", "generator": "g3", "problem": "Triple 4.",
     "steps": ["4 * 3 = 12", "12 + 0 = 12", "Answer: 13"], "label": 2},
]


def items() -> list[ProcessBenchItem]:
    return [ProcessBenchItem(r["id"], r["problem"], tuple(r["steps"]), r["label"], r["generator"],
                             n) for n, r in enumerate(ROWS, start=1)]


def shown_steps(request: ChatRequest) -> list[tuple[int, str]]:
    text = request.messages[-1].content
    return [(int(n), s) for n, s in re.findall(r'<step n="(\d+)">\n(.*?)\n</step>', text, re.S)]


def task_text(request: ChatRequest) -> str:
    found = re.search(r"<task>\n(.*?)\n</task>", request.messages[1].content, re.S)
    assert found is not None
    return found.group(1)


# ---------------------------------------------------------------- metrics


def test_metrics_on_hand_made_predictions() -> None:
    labels = [0, 2, 1, 3, -1, -1, -1]
    predicted: list[int | None] = [0, 1, None, -1, -1, 2, -1]
    m = processbench_metrics(labels, predicted, resamples=500)
    assert m.n_erroneous == 4 and m.n_correct == 3
    assert m.erroneous_accuracy is not None and m.correct_accuracy is not None
    assert m.f1 is not None
    assert m.erroneous_accuracy.value == pytest.approx(1 / 4)
    assert m.correct_accuracy.value == pytest.approx(2 / 3)
    assert m.f1.value == pytest.approx(2 * (1 / 4) * (2 / 3) / (1 / 4 + 2 / 3))
    assert m.erroneous_outcomes == {"exact": 1, "early": 1, "late": 0, "missed": 1,
                                    "unanswered": 1}
    assert m.correct_outcomes == {"clean": 2, "flagged": 1, "unanswered": 0}
    for e in (m.erroneous_accuracy, m.correct_accuracy, m.f1):
        assert 0 <= e.low <= e.value <= e.high <= 1
    assert m.f1.low < m.f1.value < m.f1.high


def test_metrics_edge_cases() -> None:
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(1.0, 0.5) == pytest.approx(2 / 3)
    only_wrong = processbench_metrics([2, 0], [2, 1])
    assert only_wrong.correct_accuracy is None and only_wrong.f1 is None
    assert only_wrong.erroneous_accuracy is not None
    assert only_wrong.erroneous_accuracy.value == 0.5
    perfect = processbench_metrics([1, -1, 0, -1], [1, -1, 0, -1])
    assert perfect.f1 is not None and (perfect.f1.low, perfect.f1.high) == (1.0, 1.0)
    with pytest.raises(ValueError, match="2 labels but 1"):
        processbench_metrics([1, -1], [1])


# ---------------------------------------------------------------- the role code path, scripted


def script_from(answers: dict[str, list[str]]) -> Callable[[ChatRequest, int], str]:
    """Replies per problem, in order (the last repeats): the critic's repair sees the next."""
    seen: dict[str, int] = {}

    def reply(request: ChatRequest, _i: int) -> str:
        problem = task_text(request)
        k = seen.get(problem, 0)
        seen[problem] = k + 1
        queue = answers[problem]
        return queue[min(k, len(queue) - 1)]

    return reply


async def test_evaluation_converts_indices_and_counts_parse_failures() -> None:
    def step(k: int) -> str:
        return json.dumps({"first_wrong_step": k, "reason": f"step {k}"})

    answers = {
        "Add 2 and 3, then double.": [step(2)],           # label 1 (0-based): exact
        "What is 7 - 4?": [step(-1)],                      # b and d: clean
        "Halve 10.": ["I think it is fine.", step(1)],    # unreadable, repaired: exact (label 0)
        "Triple 4.": ["no idea", "still no idea"],         # unreadable twice: counts wrong
    }
    model = FunctionModel(script_from(answers))
    result = await evaluate_processbench(items(), CriticEvalConfig(concurrency=1), model=model)
    by_id = {r.id: r for r in result.records}
    assert [by_id[i].predicted for i in "abcde"] == [1, -1, 0, -1, None]
    assert [by_id[i].status for i in "abcde"] == ["ok", "ok", "ok", "ok", "unreadable"]
    assert by_id["c"].repaired and not by_id["a"].repaired
    assert by_id["e"].error and by_id["e"].raw == "still no idea"
    assert [r.id for r in result.records] == list("abcde")  # file order, whatever the asking order
    m = result.metrics
    assert m.erroneous_accuracy is not None and m.correct_accuracy is not None
    assert m.erroneous_accuracy.value == pytest.approx(2 / 3)
    assert m.correct_accuracy.value == 1.0
    assert m.f1 is not None and m.f1.value == pytest.approx(0.8)
    assert m.erroneous_outcomes["unanswered"] == 1 and result.count("unreadable") == 1
    # 5 items, two of them asked twice (one repair each)
    assert len(model.requests) == 7 and result.usage.calls == 7
    # The critic saw the steps numbered from 1, text intact, and the run's critic settings.
    first = next(r for r in model.requests if task_text(r) == "Add 2 and 3, then double.")
    assert shown_steps(first) == [(1, "2 + 3 = 5"), (2, "5 * 2 = 12"), (3, "Answer: 12")]
    assert first.temperature == 0.0 and first.tags.get("role") == "step_critic"


async def test_a_critic_answering_0_based_would_score_wrong() -> None:
    """The conversion is exercised: replying the raw 0-based label misses every error."""
    raw = {r["problem"]: [json.dumps({"first_wrong_step": r["label"], "reason": "x"})]
           for r in ROWS}
    result = await evaluate_processbench(items(), model=FunctionModel(script_from(raw)))
    m = result.metrics
    assert m.correct_accuracy is not None and m.correct_accuracy.value == 1.0
    assert m.erroneous_accuracy is not None and m.erroneous_accuracy.value == 0.0
    assert {r.predicted for r in result.records if r.label == 1} == {0}


async def test_failed_items_count_wrong_and_budget_skips_the_rest() -> None:
    def flaky(request: ChatRequest, _i: int) -> str:
        if task_text(request) == "Halve 10.":
            raise ModelResponseError("the endpoint sent an empty choice list")
        return json.dumps({"first_wrong_step": -1, "reason": "fine"})

    result = await evaluate_processbench(items(), model=FunctionModel(flaky))
    failed = [r for r in result.records if r.status == "failed"]
    assert [r.id for r in failed] == ["c"] and "empty choice list" in (failed[0].error or "")
    assert result.metrics.erroneous_outcomes["unanswered"] == 1
    assert result.metrics.n == 5

    cfg = CriticEvalConfig(concurrency=1, budget=BudgetConfig(max_calls=3))
    limited = await evaluate_processbench(items(), cfg, model=FunctionModel(flaky))
    assert limited.limited_by == "calls" and limited.usage.calls <= 3
    assert limited.count("skipped") == 5 - limited.metrics.n >= 2
    assert all(r.predicted is None for r in limited.records if r.status == "skipped")


async def test_items_run_concurrently_up_to_the_limit() -> None:
    in_flight = peak = 0

    async def slow(request: ChatRequest, _i: int) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return json.dumps({"first_wrong_step": -1, "reason": "fine"})

    many = [ProcessBenchItem(f"x{i}", f"Problem {i}?", ("a", "b"), -1) for i in range(20)]
    result = await evaluate_processbench(many, CriticEvalConfig(concurrency=4),
                                         model=FunctionModel(slow))
    assert peak == 4 and result.metrics.n == 20


async def test_an_unreachable_endpoint_stops_the_evaluation() -> None:
    cfg = CriticEvalConfig(model="openai:critic@http://127.0.0.1:9/v1",
                           retry=RetryConfig(max_attempts=1))
    with pytest.raises(ModelConnectionError, match="cannot reach"):
        await evaluate_processbench(items(), cfg)


# ---------------------------------------------------------------- loading


def write_rows(path: Path, rows: list[Any], *, jsonl: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def test_loads_json_jsonl_and_gzip(tmp_path: Path) -> None:
    a = load_processbench(write_rows(tmp_path / "pb.json.gz", ROWS))
    b = load_processbench(write_rows(tmp_path / "pb.jsonl", ROWS, jsonl=True))
    assert a == b
    assert [(i.id, i.label, i.first_wrong_step, i.erroneous) for i in a][:2] == [
        ("a", 1, 2, True), ("b", -1, -1, False)]
    assert [i.id for i in load_processbench(tmp_path / "pb.jsonl", limit=2)] == ["a", "b"]
    no_ids = load_processbench(write_rows(tmp_path / "anon.json",
                                          [{k: v for k, v in r.items() if k != "id"} for r in ROWS]))
    assert [i.id for i in no_ids][:2] == ["row-1", "row-2"]
    picked = subsample(a, 3, seed=1)
    assert picked == subsample(a, 3, seed=1) and len(picked) == 3
    assert [a.index(i) for i in picked] == sorted(a.index(i) for i in picked)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"problem": "p", "steps": ["s"]}, "item 3: missing field 'label'"),
        ({"problem": "p", "steps": ["s", "t"], "label": 2},
         "item 3: 'label' 2 is not -1 or a 0-based index into its 2 steps"),
        ({"problem": "p", "steps": ["s"], "label": True}, "item 3: 'label' must be an integer"),
        ({"problem": "p", "steps": [], "label": -1}, "item 3: 'steps' must be a non-empty list"),
        ({"problem": "", "steps": ["s"], "label": -1}, "item 3: 'problem' must be"),
        ({"id": "a", "problem": "p", "steps": ["s"], "label": -1}, "item 3: id 'a' repeats item 1"),
        (["not", "an", "object"], "item 3: expected a JSON object"),
    ],
)
def test_a_malformed_row_is_named(tmp_path: Path, bad: Any, message: str) -> None:
    path = write_rows(tmp_path / "pb.json", [*ROWS[:2], bad, *ROWS[2:]])
    with pytest.raises(DataError, match=re.escape(message)):
        load_processbench(path)


def test_every_malformed_row_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "pb.jsonl"
    lines = [json.dumps(ROWS[0]), "", "{oops", json.dumps(ROWS[1])]
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 3: not valid JSON"):
        load_processbench(path)
    rows = [ROWS[0], {"problem": "p"}, ROWS[1], {"steps": 3}]
    with pytest.raises(DataError, match=r"item 2: missing field 'steps', 'label' \(and 1 more"):
        load_processbench(write_rows(tmp_path / "two.json", rows))
    with pytest.raises(DataError, match="no such file"):
        load_processbench(tmp_path / "nowhere.json")


# ---------------------------------------------------------------- sim


def test_the_sim_knows_labelled_solutions_only() -> None:
    suite = processbench_suite(items())
    assert len(suite) == 4  # b and d share a problem: one task with two labelled solutions
    shared = next(t for t in suite if t.prompt == "What is 7 - 4?")
    assert [e["first_wrong_step"] for e in shared.metadata[STEP_LABELS]] == [-1, -1]
    task = next(t for t in suite if t.prompt.startswith("Add"))
    assert labelled_first_wrong(task, [" 2 + 3  = 5", "5 * 2 = 12\n", "Answer: 12"]) == (
        2, "Step 2 goes wrong: 5 * 2 does not follow from the problem and the steps before it.")
    assert labelled_first_wrong(task, ["2 + 3 = 5", "5 * 2 = 10", "Answer: 10"]) is None


async def run_sim(path: Path, query: str, **kw: Any) -> Any:
    data = load_processbench(path)
    return await evaluate_processbench(data, CriticEvalConfig(model=f"sim?{query}", **kw))


async def test_sim_at_perfect_and_at_zero_accuracy_scores_every_item() -> None:
    path = shared_data(PROCESSBENCH)
    perfect = await run_sim(path, "sensitivity=1&specificity=1")
    assert perfect.metrics.n == 400 and all(r.hit for r in perfect.records)
    hopeless = await run_sim(path, "sensitivity=0&specificity=0")
    assert not any(r.hit for r in hopeless.records)


@pytest.mark.parametrize(("sensitivity", "specificity"), [(0.8, 0.9), (0.5, 0.6)])
async def test_sim_measured_accuracy_matches_the_configured(sensitivity: float,
                                                            specificity: float) -> None:
    path = shared_data(PROCESSBENCH)
    result = await run_sim(path, f"sensitivity={sensitivity}&specificity={specificity}")
    m = result.metrics
    assert (m.n_erroneous, m.n_correct) == (207, 193)
    assert result.count("unreadable") == result.count("failed") == 0
    assert m.erroneous_accuracy is not None and m.correct_accuracy is not None
    assert m.f1 is not None
    assert m.erroneous_accuracy.low <= sensitivity <= m.erroneous_accuracy.high
    assert m.correct_accuracy.low <= specificity <= m.correct_accuracy.high
    assert m.f1.low <= harmonic_mean(sensitivity, specificity) <= m.f1.high
    assert m.erroneous_accuracy.high - m.erroneous_accuracy.low < 0.15


# ---------------------------------------------------------------- a real endpoint: sim server


async def test_openai_endpoint_gives_what_the_sim_gives_in_process() -> None:
    data = subsample(load_processbench(shared_data(PROCESSBENCH)), 60, seed=2)
    params = SimParams(sensitivity=0.7, specificity=0.8)
    local = await evaluate_processbench(data, CriticEvalConfig(
        model="sim?sensitivity=0.7&specificity=0.8"))
    with SimServer(processbench_suite(data), params) as srv:
        remote = await evaluate_processbench(data, CriticEvalConfig(
            model=f"openai:sim@{srv.base_url}", concurrency=4))
    assert remote.model.startswith("openai:sim@http://127.0.0.1")
    assert [r.predicted for r in remote.records] == [r.predicted for r in local.records]
    assert remote.metrics == local.metrics
    assert remote.usage.calls == 60


async def test_a_refused_key_stops_the_evaluation() -> None:
    data = items()
    server = SimServer(processbench_suite(data), SimParams(), ServerConfig(api_key="right-key"))
    with server as srv, pytest.raises(ModelAuthError, match="refused the credentials"):
        await evaluate_processbench(data, CriticEvalConfig(model=f"openai:sim@{srv.base_url}"))


# ---------------------------------------------------------------- CLI


def test_cli_against_a_server(tmp_path: Path, clean_env: Path) -> None:
    path = shared_data(PROCESSBENCH)
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DELIBERATE_"))}
    env.update(DELIBERATE_HOME=str(clean_env), COLUMNS="200")
    with SimServer(processbench_suite(load_processbench(path)),
                   SimParams(sensitivity=0.8, specificity=0.9)) as srv:
        r = subprocess.run(
            [sys.executable, "-m", "deliberate", "eval", "critic", "processbench",
             "--data", str(path), "--model", f"openai:sim@{srv.base_url}", "--sample", "50",
             "--concurrency", "4", "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "erroneous: names the first wrong step" in r.stdout and "F1" in r.stdout
    assert "wrote 50 item records" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["data"] == str(path) and len(saved["items"]) == 50
    labels = [i["label"] for i in saved["items"]]
    hits = [i["predicted"] == i["label"] for i in saved["items"]]
    assert [i["hit"] for i in saved["items"]] == hits
    n_err = sum(y != -1 for y in labels)
    acc = saved["metrics"]["erroneous_accuracy"]
    assert acc["n"] == n_err and acc["value"] == pytest.approx(
        sum(h for h, y in zip(hits, labels, strict=True) if y != -1) / n_err)
    assert f"{100 * acc['value']:.1f}%" in r.stdout


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "critic", "processbench", *args])
    code = exit_info.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err.strip()


def test_cli_malformed_data_is_one_line_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_rows(tmp_path / "pb.json", [ROWS[0], {"problem": "p", "steps": ["s"],
                                                     "label": 4}])
    code, err = run_main(["--data", str(bad)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "item 2: 'label' 4 is not -1" in err
    code, err = run_main(["--data", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "no such file" in err and len(err.splitlines()) == 1


def test_cli_unreachable_endpoint_is_one_actionable_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "pb.json", ROWS)
    code, err = run_main(["--data", str(data), "--model", "openai:critic@http://127.0.0.1:9/v1",
                          "--retries", "1"], capsys)
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot reach http://127.0.0.1:9/v1" in err and "is the server running" in err


def test_cli_sim_prints_the_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "pb.json", ROWS)
    main(["eval", "critic", "processbench", "--data", str(data), "--model",
          "sim?sensitivity=1&specificity=1"])
    out = capsys.readouterr().out
    assert "100.0%" in out and "simulated model" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "critic", "processbench", "--data", str(data), "--limit", "2",
              "--sample", "2"])
    assert exit_info.value.code == 2
    assert "not both" in capsys.readouterr().err
