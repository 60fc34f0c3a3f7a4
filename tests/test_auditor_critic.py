"""auditor_critic (GPTLens): ranking formula, matching by identifier, repairs, budgets,
and runs on SmartBugs-curated with the sim model (in process, over HTTP, from the CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest, Message, ModelProfile
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.roles.auditor import FindingScore, parse_findings, parse_scores
from deliberate.strategies.auditor_critic import AuditorCriticConfig, rank_findings
from deliberate.tasks.smartbugs import load_smartbugs
from deliberate.verifiers.detection import DetectionVerifier
from tests.conftest import REPO, shared_data

SOURCE = "\n".join([
    "contract Bank {",                                 # 1
    "  mapping(address => uint) balances;",            # 2
    "  function deposit() payable {",                  # 3
    "    balances[msg.sender] += msg.value;",          # 4
    "  }",                                             # 5
    "  function withdraw(uint amount) {",              # 6
    "    // pays out first",                           # 7
    "    msg.sender.call.value(amount)();",            # 8
    "    balances[msg.sender] -= amount;",             # 9
    "  }",                                             # 10
    "  function kill() { selfdestruct(msg.sender); }",  # 11
    "}",
])
TASK = Task(id="bank", prompt=SOURCE, kind="findings", metadata={"findings": [
    {"category": "reentrancy", "lines": [8], "function": "withdraw"},
    {"category": "arithmetic", "lines": [4], "function": "deposit"},
    {"category": "access_control", "lines": [11], "function": "kill"},
]})
SUITE = Suite.of("bank", [TASK])


def cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"),
                            "cache": False, "suite": "bank", "strategy": "auditor_critic"}
    base.update(kw)
    return RunConfig.model_validate(base)


def f(fn: str, vuln: str, **extra: Any) -> dict[str, Any]:
    return {"function_name": fn, "vulnerability": vuln, "reason": f"{vuln} in {fn}", **extra}


AUDITS = {
    0: [f("withdraw", "Reentrancy"), f("deposit", "Integer overflow"),
        f("kill", "Unprotected selfdestruct")],
    1: [f("withdraw", "Re-entrancy attack"), f("deposit", "Timestamp dependence"),
        f("withdraw", "Denial of service")],
}
# (correctness, severity, profitability) by (function, vulnerability); hand-computed
# ranker scores with weights 0.5 / 0.25 / 0.25:
SCORES = {
    ("kill", "Unprotected selfdestruct"): (9, 9, 8),   # 4.5 + 2.25 + 2.0  = 8.75
    ("withdraw", "Reentrancy"): (8, 6, 4),             # 4.0 + 1.5  + 1.0  = 6.5
    ("deposit", "Integer overflow"): (4, 9, 9),        # 2.0 + 2.25 + 2.25 = 6.5 (tie)
    ("withdraw", "Denial of service"): (5, 5, 5),      # 2.5 + 1.25 + 1.25 = 5.0 (at threshold)
    ("deposit", "Timestamp dependence"): (6, 4, 0),    # 3.0 + 1.0  + 0.0  = 4.0 (dropped)
}


def is_auditor(r: ChatRequest) -> bool:
    return "<audit>" in r.messages[1].content


def shown_findings(r: ChatRequest) -> dict[str, dict[str, Any]]:
    text = r.messages[1].content
    body = text[text.index("<findings>") + 10 : text.index("</findings>")]
    return {x["id"]: x for x in json.loads(body)}


def critic_reply(r: ChatRequest, omit: Collection[tuple[str, str]] = (),
                 only: list[str] | None = None) -> str:
    """Scores by the finding's content, keyed by its id, in REVERSED id order."""
    out = {}
    for fid, item in reversed(list(shown_findings(r).items())):
        key = (item["function_name"], item["vulnerability"])
        if key in omit or (only is not None and fid not in only):
            continue
        c, s, p = SCORES[key]
        out[fid] = {"criticism": f"about {key}", "correctness": c, "severity": s,
                    "profitability": p}
    return "Here is my review:\n```json\n" + json.dumps(out, indent=1) + "\n```"


def test_rank_findings_hand_computed() -> None:
    def s(c: float, sev: float, p: float) -> FindingScore:
        return FindingScore(correctness=c, severity=sev, profitability=p)

    ranking = rank_findings(
        [("F1", s(8, 6, 4)), ("F2", s(4, 9, 9)), ("F3", s(9, 9, 8)), ("F4", s(6, 4, 0)),
         ("F5", s(5, 5, 5)), ("F6", None)],
        (0.5, 0.25, 0.25), 5.0)
    assert ranking.kept == [("F3", 8.75), ("F1", 6.5), ("F2", 6.5), ("F5", 5.0)]
    assert ranking.dropped == [("F4", 4.0)]
    assert ranking.unscored == ["F6"]
    # other weights: correctness only, threshold 7
    ranking = rank_findings([("F1", s(8, 0, 0)), ("F2", s(6, 9, 9))], (1.0, 0.0, 0.0), 7.0)
    assert ranking.kept == [("F1", 8.0)] and ranking.dropped == [("F2", 6.0)]


async def test_findings_ranked_by_identifier_end_to_end(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_auditor(r):
            return json.dumps(AUDITS[i])
        return critic_reply(r)

    model = FunctionModel(script)
    res = await arun(cfg(tmp_path, strategy_params={"preset": "smart-contract"}),
                     models={"scripted": model}, suite=SUITE)
    (attempt,) = res.attempts
    answer = json.loads(attempt.answer or "")
    assert [(x["function_name"], x["vulnerability"], x["score"]) for x in answer] == [
        ("kill", "Unprotected selfdestruct", 8.75), ("withdraw", "Reentrancy", 6.5),
        ("deposit", "Integer overflow", 6.5), ("withdraw", "Denial of service", 5.0)]
    # the detection verifier graded the ranked list: three labels found, DoS is false
    assert attempt.stats["metrics"] == {"tp": 3, "fp": 1, "fn": 0}
    assert res.summary["detection"]["precision"] == 0.75
    # one request for both auditors (n=2), one critic call for every unique finding
    audits = [r for r in model.requests if is_auditor(r)]
    critics = [r for r in model.requests if not is_auditor(r)]
    assert len(audits) == 1 and audits[0].n == 2 and audits[0].temperature == 0.7
    assert len(critics) == 1 and critics[0].temperature == 0.0
    assert list(shown_findings(critics[0])) == ["F1", "F2", "F3", "F4", "F5"]  # deduplicated
    assert "pays out first" not in audits[0].messages[1].content  # comments stripped
    assert "3 most severe" in audits[0].messages[1].content

    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "bank")
    by_op: dict[str, list[Any]] = {}
    for n in nodes:
        by_op.setdefault(n.operator, []).append(n)
    assert len(by_op["generate"]) == 2 and len(by_op["finding"]) == 6
    assert {n.parent_id for n in by_op["finding"]} == {n.id for n in by_op["generate"]}
    dup = [n for n in by_op["finding"] if "duplicate_of" in n.meta]
    assert len(dup) == 1 and dup[0].meta["finding"]["vulnerability"] == "Re-entrancy attack"
    (rank,) = by_op["rank"]
    assert rank.id == attempt.final_node_id and rank.parent_id == by_op["root"][0].id
    critic_j = {j.node_id: j for j in judgements if j.role == "critic"}
    assert len(critic_j) == 5
    nodes_by_id = {n.id: n for n in nodes}
    for node_id, j in critic_j.items():
        item = nodes_by_id[node_id].meta["finding"]
        c, s, p = SCORES[(item["function_name"], item["vulnerability"])]
        assert j.score == pytest.approx(0.5 * c + 0.25 * s + 0.25 * p)
        assert (j.scale_min, j.scale_max) == (0.0, 9.0)
        assert (j.meta["correctness"], j.meta["severity"], j.meta["profitability"]) == (c, s, p)
        assert j.score is not None
        assert j.verdict == ("correct" if j.score >= 5 else "incorrect")
    assert [d["id"] for d in rank.meta["dropped"]] == ["F4"]


@pytest.mark.parametrize("repair_supplies", [False, True])
async def test_omitted_finding_is_matched_by_id_and_never_defaulted(
        tmp_path: Path, repair_supplies: bool) -> None:
    omitted = ("deposit", "Integer overflow")
    seen_repairs: list[ChatRequest] = []

    def script(r: ChatRequest, i: int) -> str:
        if is_auditor(r):
            return json.dumps(AUDITS[i])
        if any(m.role == "assistant" for m in r.messages):
            seen_repairs.append(r)
            return critic_reply(r, only=["F2"]) if repair_supplies else "{}"
        return critic_reply(r, omit={omitted})

    res = await arun(cfg(tmp_path, strategy_params={"n": 2, "top_k": 3}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert len(seen_repairs) == 1
    assert "F2 (missing)" in seen_repairs[0].messages[-1].content
    answer = [(x["function_name"], x["vulnerability"]) for x in json.loads(res.attempts[0].answer
                                                                           or "")]
    if repair_supplies:
        assert answer[2] == omitted
    else:
        assert omitted not in answer
        assert answer == [("kill", "Unprotected selfdestruct"), ("withdraw", "Reentrancy"),
                          ("withdraw", "Denial of service")]
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "bank")
    f2 = next(n for n in nodes if n.meta.get("id") == "F2")
    (j,) = [j for j in judgements if j.node_id == f2.id and j.role == "critic"]
    if repair_supplies:
        assert j.score == 6.5 and j.meta.get("repaired") is True
    else:
        assert j.verdict == "parse_failure" and j.score is None
        assert res.attempts[0].stats["note"].endswith("left unscored by the critic and dropped")


def test_critic_parsing_matches_ids_not_positions() -> None:
    ids = ["F1", "F2", "F3"]
    reply = ('[{"id": "F3", "correctness": 2, "severity": 3, "profitability": 1},'
             ' {"id": "f1", "correctness": "8/9", "severity": 7, "profitability": 6}]')
    scores, problems = parse_scores(reply, ids)
    assert scores["F1"].correctness == 8 and scores["F3"].correctness == 2
    assert problems == {"F2": "missing"}
    scores, problems = parse_scores('{"F1": {"correctness": 12, "severity": 1, '
                                    '"profitability": 1}}', ["F1"])
    assert not scores and "outside 0..9" in problems["F1"]


async def test_auditor_reply_repaired_once_then_recorded(tmp_path: Path) -> None:
    calls: list[int] = []

    def script(r: ChatRequest, i: int) -> str:
        if is_auditor(r):
            repair = any(m.role == "assistant" for m in r.messages)
            calls.append(i)
            if i == 0:
                return json.dumps([AUDITS[0][0]]) if repair else "withdraw is reentrant!"
            return "still no JSON" if repair else "[{'function_name': 'kill',"
        return critic_reply(r)

    res = await arun(cfg(tmp_path), models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert sorted(calls) == [0, 0, 1, 1]  # one request (n=2), then one repair per sample
    assert json.loads(res.attempts[0].answer or "")[0]["function_name"] == "withdraw"
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "bank")
    gens = sorted((n for n in nodes if n.operator == "generate"), key=lambda n: n.sample_index or 0)
    assert gens[0].meta["first_reply"] == "withdraw is reentrant!"
    assert json.loads(gens[0].text) == [AUDITS[0][0]]
    failed = [j for j in judgements if j.node_id == gens[1].id and j.role == "auditor"]
    assert len(failed) == 1 and failed[0].verdict == "parse_failure"


def test_auditor_accepts_other_shapes_and_keeps_top_k() -> None:
    text = ('{"output_list": [{"function": "a", "type": "reentrancy", "line": "4-6"},'
            ' {"function_name": null, "vulnerability": "overflow", "lines": 9},'
            ' {"function_name": "c", "vulnerability": "dos"}]}')
    found = parse_findings(text, top_k=2)
    assert [(x.function_name, x.vulnerability, x.lines) for x in found] == [
        ("a", "reentrancy", [4, 5, 6]), ("", "overflow", [9])]


async def test_temperatures_from_roles_or_pinned_by_preset(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        return json.dumps(AUDITS[i % 2]) if is_auditor(r) else critic_reply(r)

    async def temps(params: dict[str, Any]) -> tuple[float, float, str]:
        model = FunctionModel(script)
        await arun(cfg(tmp_path, strategy_params=params,
                       roles={"auditor": {"temperature": 0.3}}, critic={"temperature": 0.1}),
                   models={"scripted": model}, suite=SUITE)
        a = next(r for r in model.requests if is_auditor(r))
        c = next(r for r in model.requests if not is_auditor(r))
        return a.temperature, c.temperature, a.messages[1].content

    t_a, t_c, prompt = await temps({})
    assert (t_a, t_c) == (0.3, 0.1) and "pays out first" in prompt
    t_a, t_c, prompt = await temps({"preset": "smart-contract", "top_k": 5})
    assert (t_a, t_c) == (0.7, 0.0) and "5 most severe" in prompt
    t_a, t_c, _ = await temps({"preset": "smart-contract", "auditor_temperature": 1.0})
    assert (t_a, t_c) == (1.0, 0.0)
    c = AuditorCriticConfig.model_validate({"preset": "smart_contract"})
    assert (c.top_k, c.weights, c.threshold, c.strip_comments) == (3, (0.5, 0.25, 0.25), 5.0,
                                                                   True)


async def test_json_schema_response_format_where_the_endpoint_supports_it(
        tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_auditor(r):
            return json.dumps({"findings": [{**x, "lines": []} for x in AUDITS[i]]})
        return critic_reply(r).split("```json")[1].split("```")[0]

    model = FunctionModel(script, profile=ModelProfile(supports_json_schema=True))
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    audit = next(r for r in model.requests if is_auditor(r))
    critic = next(r for r in model.requests if not is_auditor(r))
    assert audit.response_format is not None and critic.response_format is not None
    schema = critic.response_format["json_schema"]["schema"]
    assert schema["required"] == ["F1", "F2", "F3", "F4", "F5"]
    assert len(json.loads(res.attempts[0].answer or "")) == 4


async def test_critic_off_returns_every_unique_finding(tmp_path: Path) -> None:
    model = FunctionModel(lambda r, i: json.dumps(AUDITS[i]) if is_auditor(r) else "{}")
    res = await arun(cfg(tmp_path, strategy_params={"critic": False}),
                     models={"scripted": model}, suite=SUITE)
    assert len(json.loads(res.attempts[0].answer or "")) == 5
    assert all(is_auditor(r) for r in model.requests)
    assert res.attempts[0].stats["metrics"] == {"tp": 3, "fp": 2, "fn": 0}


async def test_budget_stops_cleanly_with_best_so_far(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        return json.dumps(AUDITS[i]) if is_auditor(r) else critic_reply(r)

    res = await arun(cfg(tmp_path, task_budget={"max_calls": 1}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    (a,) = res.attempts
    assert a.status == "budget_limited" and a.calls == 1
    assert len(json.loads(a.answer or "")) == 5  # unranked auditor findings
    assert "budget" in a.stats["note"]
    res = await arun(cfg(tmp_path, task_budget={"max_tokens": 20}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert res.attempts[0].answer is None and res.attempts[0].status == "budget_limited"


# ----------------------------------------------------------------------- the sim's roles


def sim_request(text: str, temperature: float = 0.7, n: int = 1) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), temperature=temperature, n=n)


async def test_sim_auditor_finds_more_with_skill_and_pads_with_false_findings() -> None:
    from deliberate.config import RoleConfig
    from deliberate.roles.auditor import Auditor
    from deliberate.roles.prompts import Prompts

    suite = Suite.of("bank", [TASK])
    rates = []
    for skill in (0.0, 1.2):
        model = SimModel(suite, SimParams(skill=skill, task_noise=0))
        auditor = Auditor(model, RoleConfig(temperature=0.7), Prompts(), 1, top_k=3,
                          strip_comments=True)
        resp = await auditor.audit(TASK, 60)
        results = [await DetectionVerifier().verify(TASK, c.text, None) for c in resp.completions]
        rates.append(sum(r.metrics["tp"] for r in results) / (3 * len(results)))
        assert all(len(parse_findings(c.text)) <= 3 for c in resp.completions)
    assert rates[0] < 0.3 < 0.9 < rates[1]


async def test_sim_critic_scores_real_findings_higher_and_ignores_ids() -> None:
    model = SimModel(Suite.of("bank", [TASK]), SimParams(sensitivity=0.9, specificity=0.9))
    real = f("withdraw", "Reentrancy")
    false = f("deposit", "Timestamp dependence")

    def prompt(items: list[tuple[str, dict[str, Any]]]) -> str:
        shown = json.dumps([{"id": i, **x} for i, x in items])
        return f"<code>\n{SOURCE}\n</code>\n<findings>\n{shown}\n</findings>"

    one = json.loads((await model.complete(sim_request(prompt([("F1", real), ("F2", false)]),
                                                       0.0))).texts[0])
    two = json.loads((await model.complete(sim_request(prompt([("F7", false), ("F9", real)]),
                                                       0.0))).texts[0])
    assert one["F1"] == two["F9"] and one["F2"] == two["F7"]  # by content, not id/position
    highs = lows = 0
    for k in range(40):
        fake = f("kill", "Integer overflow", reason=f"variant {k}")
        good = f("withdraw", "Reentrancy", reason=f"variant {k}")
        out = json.loads((await model.complete(
            sim_request(prompt([("F1", good), ("F2", fake)]), 0.0))).texts[0])
        highs += out["F1"]["correctness"] >= 7
        lows += out["F2"]["correctness"] <= 3
    assert highs >= 28 and lows >= 28


# ----------------------------------------------------------------------- SmartBugs runs


def smartbugs_config(tmp_path: Path, params: dict[str, Any], **kw: Any) -> RunConfig:
    path = shared_data("contracts/smartbugs-curated")
    base: dict[str, Any] = {"suite": f"smartbugs:{path}", "model": "sim", "cache": False,
                            "strategy": "auditor_critic", "strategy_params": params,
                            "store": str(tmp_path / "sb.db"), "seed": 0}
    base.update(kw)
    return RunConfig.model_validate(base)


async def test_smartbugs_with_sim_critic_beats_auditor_alone_on_precision(
        tmp_path: Path) -> None:
    """The figures in docs/strategies.md come from this run (all 143 contracts)."""
    both = await arun(smartbugs_config(tmp_path, {"preset": "smart-contract"}))
    alone = await arun(smartbugs_config(tmp_path, {"preset": "smart-contract", "critic": False}))
    d, a = both.summary["detection"], alone.summary["detection"]
    assert both.summary["tasks"] == 143 and both.summary["failed"] == 0
    assert d["tp"] + d["fn"] == 207 == a["tp"] + a["fn"]
    for key in ("precision", "recall", "f1", "fp_per_task"):
        assert isinstance(d[key], float) and isinstance(a[key], float)
    assert d["precision"] > a["precision"] + 0.2
    assert d["fp_per_task"] < a["fp_per_task"] / 2
    assert d["f1"] > a["f1"]
    assert d["recall"] <= a["recall"]  # the critic only removes findings


async def test_smartbugs_runs_are_deterministic_under_a_seed(tmp_path: Path) -> None:
    params = {"preset": "smart-contract"}
    one = await arun(smartbugs_config(tmp_path, params, limit=25, seed=3))
    two = await arun(smartbugs_config(tmp_path, params, limit=25, seed=3))
    assert [a.answer for a in one.attempts] == [a.answer for a in two.attempts]
    other = await arun(smartbugs_config(tmp_path, params, limit=25, seed=4))
    assert [a.answer for a in one.attempts] != [a.answer for a in other.attempts]


async def test_smartbugs_through_the_openai_client_and_sim_server(tmp_path: Path) -> None:
    suite = load_smartbugs(shared_data("contracts/smartbugs-curated")).head(12)
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(smartbugs_config(tmp_path, {"preset": "smart-contract"}, limit=12,
                                          model=f"openai:sim@{srv.base_url}"))
    assert res.summary["failed"] == 0 and res.summary["tasks"] == 12
    det = res.summary["detection"]
    assert det["tp"] > 0 and det["precision"] is not None
    assert res.summary["calls"] == 12 * 2  # one auditor request (n=2), one critic call
    st = Store.open(str(tmp_path / "sb.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, res.attempts[0].task_id)
    assert {n.operator for n in nodes} >= {"root", "generate", "finding", "rank"}
    assert any(j.role == "critic" and j.score is not None for j in judgements)


def test_cli_runs_auditor_critic_on_smartbugs(tmp_path: Path) -> None:
    path = shared_data("contracts/smartbugs-curated")
    store = tmp_path / "cli.db"
    env = {**os.environ, "DELIBERATE_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--suite", f"smartbugs:{path}",
         "--strategy", "auditor_critic", "-p", "preset=smart-contract", "-p", "n=2",
         "--limit", "4", "--model", "sim", "--store", str(store), "--no-cache"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "detection precision / recall / F1" in r.stdout
    suite = load_smartbugs(path)

    async def grade() -> int:
        st = Store.open(str(store))
        async with st:
            (run,) = await st.list_runs()
            attempts = await st.get_attempts(run.id)
        assert len(attempts) == 4 and all(a.status == "done" for a in attempts)
        tp = 0
        for a in attempts:
            res = await DetectionVerifier().verify(suite.get(a.task_id), a.answer or "", None)
            assert res.passed is not None
            tp += int(res.metrics["tp"])
        return tp

    assert asyncio.run(grade()) > 0
