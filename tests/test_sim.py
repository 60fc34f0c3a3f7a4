"""The sim model: role protocol, determinism, calibrated skill, critic and refiner rates."""

from __future__ import annotations

import ast
import asyncio
import json
import math
import random
from importlib.resources import files
from typing import Any

import jinja2
import pytest

from deliberate.models.base import ChatModel, ChatRequest, Message
from deliberate.models.sim import (
    SimModel,
    SimParams,
    count_tokens,
    first_divergence,
    mutate_code,
    normalise_solution,
    parse_prompt,
    parse_verdict,
    same_program,
    token_pieces,
    wrong_math_solution,
)
from deliberate.models.sim.protocol import extract_code
from deliberate.tasks.task import Suite, Task
from deliberate.verifiers.answer import answers_match, extract_answer

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(files("deliberate.roles") / "templates")),
    autoescape=False,
)


def render(role: str, task: Task, **values: Any) -> tuple[Message, ...]:
    """The conversation a role would send, built from the real templates."""
    system = _TEMPLATES.get_template(f"{role}_system.j2").render(task=task, **values)
    user = _TEMPLATES.get_template(f"{role}_user.j2").render(task=task, **values)
    return (Message("system", system), Message("user", user))


def math_task(i: int, difficulty: float) -> Task:
    """A GSM8K-style task with calculator annotations and a ``####`` answer."""
    a, b, c, price = 10 + i % 37, 3 + i % 11, 2 + i % 5, 2 + i % 7
    total = a + b
    left = total - c
    paid = left * price
    solution = (
        f"Tom starts with {a} + {b} = <<{a}+{b}={total}>>{total} apples.\n"
        f"He gives away {c}, so he keeps {total} - {c} = <<{total}-{c}={left}>>{left} apples.\n"
        f"Selling them at ${price} each earns {left} * {price} = $<<{left}*{price}={paid}>>{paid}.\n"
        f"#### {paid}"
    )
    prompt = (
        f"Problem {i}: Tom has {a} apples and picks {b} more. He gives {c} to a friend and "
        f"sells the rest for ${price} each. How many dollars does he earn?"
    )
    return Task(
        id=f"math-{i}",
        prompt=prompt,
        kind="math",
        answer=str(paid),
        solution=solution,
        metadata={"difficulty": difficulty},
    )


CODE_PROMPT = '''def count_positive(xs: list[int], limit: int) -> int:
    """Count the items of xs that are positive and below limit."""
'''
CODE_SOLUTION = (
    CODE_PROMPT
    + """    total = 0
    for x in xs:
        # only strictly positive values count
        if x > 0 and x < limit:
            total += 1
    return total
"""
)
CODE_TASK = Task(
    id="code-count",
    prompt=CODE_PROMPT,
    kind="code",
    solution=CODE_SOLUTION,
    entry_point="count_positive",
    metadata={"difficulty": 0.5},
)
CODE_TASK_2 = Task(
    id="code-clip",
    prompt='def clip(x: int, lo: int, hi: int) -> int:\n    """Clamp x into [lo, hi]."""\n',
    kind="code",
    solution=(
        'def clip(x: int, lo: int, hi: int) -> int:\n    """Clamp x into [lo, hi]."""\n'
        "    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n"
    ),
    metadata={"difficulty": 0.5},
)
FINDINGS_TASK = Task(
    id="audit-1",
    prompt="contract Bank {\n  function withdraw() public {\n    msg.sender.call.value(1)();\n  }\n}\n",
    kind="findings",
    metadata={"findings": [{"category": "reentrancy", "lines": [3], "function": "withdraw"}]},
)
CHOICE_TASK = Task(
    id="choice-1",
    prompt="Which is a prime?\nA) 4\nB) 6\nC) 7\nD) 9",
    kind="choice",
    answer="C",
)


def make_suite(n_math: int = 40, difficulty: float | None = None) -> Suite:
    tasks = [
        math_task(i, difficulty if difficulty is not None else (i % 10) / 10) for i in range(n_math)
    ]
    return Suite.of("unit", [*tasks, CODE_TASK, CODE_TASK_2, FINDINGS_TASK, CHOICE_TASK])


def gen_request(task: Task, **kw: Any) -> ChatRequest:
    return ChatRequest(messages=render("generator", task), **kw)


def reference_text(task: Task) -> str:
    if task.kind == "code":
        return f"```python\n{task.solution}```"
    assert task.solution is not None
    return normalise_solution(task.solution, task.answer)


def logistic(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- protocol


def test_roles_are_read_from_the_templates() -> None:
    task = math_task(1, 0.5)
    assert parse_prompt(render("generator", task)).role == "generator"
    critic = parse_prompt(render("critic", task, candidate="x = 1", scale_min=0, scale_max=1))
    assert critic.role == "critic"
    assert critic.candidate == "x = 1"
    assert critic.scale == (0.0, 1.0)
    assert critic.task_text == task.prompt
    judge = parse_prompt(render("judge", task, candidate="c", scale_min=1, scale_max=5))
    assert (judge.role, judge.scale) == ("critic", (1.0, 5.0))
    refiner = parse_prompt(render("refiner", task, candidate="c\n<x>", critique="wrong at step 2"))
    assert refiner.role == "refiner"
    assert (refiner.candidate, refiner.critique) == ("c\n<x>", "wrong at step 2")


@pytest.mark.parametrize(
    ("critique", "verdict"),
    [
        ('{"critique": "fine", "verdict": "correct", "score": 9}', "correct"),
        ('{"critique": "Step 2 is off", "verdict": "incorrect", "score": 2}', "incorrect"),
        ("Verdict: incorrect. Step 1 is wrong.", "incorrect"),
        ("Everything is right.", "correct"),
        ("There is a mistake in step 3, although the setup is correct.", "incorrect"),
        ("Hmm.", None),
    ],
)
def test_verdicts_are_parsed_from_critiques(critique: str, verdict: str | None) -> None:
    assert parse_verdict(critique) == verdict


def test_tokenizer_pieces_join_back() -> None:
    text = "Step 1: 12 * 4 = 48.\n  Answer: 48 "
    pieces = token_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) == count_tokens(text) == 12


# ---------------------------------------------------------------- the model contract


async def test_model_contract_and_identity() -> None:
    suite = make_suite(5)
    model = SimModel(suite, SimParams())
    assert isinstance(model, ChatModel)
    assert model.model_id == "sim:unit"
    tuned = SimModel(suite, SimParams(skill=0.8, seed=3, latency_ms=1.0))
    assert tuned.model_id == "sim:unit?seed=3&skill=0.8"
    assert SimParams.from_query("seed=3&skill=0.8") == SimParams(skill=0.8, seed=3)
    assert model.profile.supports_n
    assert model.profile.max_n == 128
    assert model.profile.supports_seed
    with pytest.raises(ValueError, match="frozen"):
        model.params.skill = 1.0

    request = gen_request(suite.tasks[0], n=3, sample_offset=5, seed=1)
    response = await model.complete(request)
    assert [c.sample_index for c in response.completions] == [5, 6, 7]
    assert response.cost == 0.0
    assert response.usage.prompt_tokens == sum(
        count_tokens(m.content) + 4 for m in request.messages
    )
    assert response.usage.completion_tokens == sum(
        count_tokens(c.text) for c in response.completions
    )
    assert all(c.completion_tokens == count_tokens(c.text) for c in response.completions)
    await model.aclose()


async def test_latency_is_simulated() -> None:
    model = SimModel(make_suite(1), SimParams(latency_ms=30))
    response = await model.complete(gen_request(math_task(0, 0.5)))
    assert response.latency_s >= 0.03


# ---------------------------------------------------------------- determinism


async def test_same_request_same_output_in_any_order_and_concurrency() -> None:
    suite = make_suite(20)
    requests = [gen_request(t, n=4, seed=7, temperature=0.8) for t in suite.tasks]
    first = [(await SimModel(suite).complete(r)).texts for r in requests]
    model = SimModel(suite)
    shuffled = list(range(len(requests)))
    random.Random(1).shuffle(shuffled)
    later = {i: (await model.complete(requests[i])).texts for i in shuffled}
    assert [later[i] for i in range(len(requests))] == first
    together = await asyncio.gather(*(model.complete(r) for r in requests))
    assert [r.texts for r in together] == first
    # Samples are addressable: n=4 at once equals two n=2 halves.
    halves = [await model.complete(requests[0].with_samples(2, k)) for k in (0, 2)]
    assert halves[0].texts + halves[1].texts == first[0]


async def test_samples_differ_by_index_and_seed_but_not_at_temperature_zero() -> None:
    suite = make_suite(10, difficulty=0.6)
    model = SimModel(suite, SimParams(task_noise=0.0))
    task = suite.tasks[3]
    varied = (await model.complete(gen_request(task, n=32, seed=1))).texts
    assert len(set(varied)) > 1
    other_seed = (await model.complete(gen_request(task, n=32, seed=2))).texts
    assert other_seed != varied
    greedy = [
        (await model.complete(gen_request(task, n=8, seed=s, temperature=0))).texts for s in (1, 2)
    ]
    assert len(set(greedy[0])) == 1
    assert greedy[0] == greedy[1]


# ---------------------------------------------------------------- generator skill


async def test_generator_accuracy_follows_the_logistic() -> None:
    difficulties = [0.2, 0.5, 0.8]
    tasks = [math_task(i, difficulties[i % 3]) for i in range(120)]
    suite = Suite.of("calib", tasks)
    samples = 20
    for skill in (0.4, 0.7):
        params = SimParams(skill=skill, task_noise=0.0, seed=11)
        model = SimModel(suite, params)
        by_difficulty: dict[float, list[bool]] = {d: [] for d in difficulties}
        for task in tasks:
            response = await model.complete(gen_request(task, n=samples, seed=3))
            by_difficulty[task.difficulty] += [
                answers_match(extract_answer(t), task.answer) for t in response.texts
            ]
        accuracies = []
        for d, outcomes in by_difficulty.items():
            expected = logistic(params.sharpness * (skill - d))
            measured = sum(outcomes) / len(outcomes)
            sd = math.sqrt(expected * (1 - expected) / len(outcomes))
            assert abs(measured - expected) < 4 * sd + 0.01, (skill, d, measured, expected)
            accuracies.append(measured)
        assert accuracies == sorted(accuracies, reverse=True)  # harder -> worse


async def test_task_noise_correlates_samples_of_a_task() -> None:
    tasks = [math_task(i, 0.5) for i in range(150)]
    suite = Suite.of("noise", tasks)
    model = SimModel(suite, SimParams(skill=0.5, task_noise=0.5, seed=5))
    expected = sum(model.p_correct(t) for t in tasks) / len(tasks)
    per_task = []
    for task in tasks:
        texts = (await model.complete(gen_request(task, n=10, seed=1))).texts
        per_task.append(sum(answers_match(extract_answer(t), task.answer) for t in texts) / 10)
    measured = sum(per_task) / len(per_task)
    assert abs(measured - expected) < 0.05
    # Offsets spread tasks apart: some are nearly always solved, some nearly never.
    assert sum(a >= 0.9 for a in per_task) > 10
    assert sum(a <= 0.1 for a in per_task) > 10
    assert SimModel(suite, SimParams(skill=0.9)).p_correct(tasks[0]) > model.p_correct(tasks[0])


async def test_wrong_answers_cluster_on_a_few_values() -> None:
    suite = make_suite(10, difficulty=0.9)
    model = SimModel(suite, SimParams(skill=0.1, task_noise=0.0))
    for task in suite.tasks[:10]:
        texts = (await model.complete(gen_request(task, n=60, seed=4))).texts
        wrong = {extract_answer(t) for t in texts} - {task.answer}
        assert 1 <= len(wrong) <= 3


async def test_correct_outputs_are_worked_solutions_and_programs() -> None:
    suite = make_suite(3)
    model = SimModel(suite, SimParams(skill=5.0, task_noise=0.0))
    task = suite.tasks[0]
    text = (await model.complete(gen_request(task, seed=1))).texts[0]
    assert "<<" not in text
    assert "####" not in text
    assert text.splitlines()[-1] == f"Answer: {task.answer}"
    code = (await model.complete(gen_request(CODE_TASK, seed=1))).texts[0]
    assert "```python" in code
    assert same_program(extract_code(code), CODE_SOLUTION)
    findings = json.loads((await model.complete(gen_request(FINDINGS_TASK))).texts[0])
    assert findings == [{"category": "reentrancy", "lines": [3], "function": "withdraw"}]
    choice = (await model.complete(gen_request(CHOICE_TASK))).texts[0]
    assert extract_answer(choice) == "C"


async def test_wrong_code_and_findings_are_wrong() -> None:
    suite = make_suite(0)
    model = SimModel(suite, SimParams(skill=-5.0, task_noise=0.0))
    for task in (CODE_TASK, CODE_TASK_2):
        for text in (await model.complete(gen_request(task, n=10, seed=1))).texts:
            program = extract_code(text)
            ast.parse(program)
            assert not same_program(program, task.solution or "")
    for text in (await model.complete(gen_request(FINDINGS_TASK, n=10, seed=1))).texts:
        assert json.loads(text) != FINDINGS_TASK.metadata["findings"]
    for text in (await model.complete(gen_request(CHOICE_TASK, n=10, seed=1))).texts:
        assert extract_answer(text) in {"A", "B", "D"}


async def test_unknown_task_gets_a_generic_but_valid_reply() -> None:
    model = SimModel(make_suite(2))
    response = await model.complete(ChatRequest(messages=(Message("user", "What is love?"),)))
    assert response.texts[0]
    assert response.completions[0].finish_reason == "stop"
    other = Task(id="zzz", prompt="Unrelated question?", kind="math", answer="1")
    critic = await model.complete(
        ChatRequest(messages=render("critic", other, candidate="1", scale_min=1, scale_max=10))
    )
    assert json.loads(critic.texts[0])["verdict"] in ("correct", "incorrect")


# ---------------------------------------------------------------- wrong math solutions


def test_wrong_math_solution_diverges_exactly_at_its_first_wrong_step() -> None:
    rng = random.Random(0)
    for i in range(60):
        task = math_task(i, 0.5)
        assert task.solution is not None
        reference = normalise_solution(task.solution)
        text, step = wrong_math_solution(task.solution, rng)
        ref_lines, lines = reference.splitlines(), text.splitlines()
        assert lines[: step - 1] == ref_lines[: step - 1]
        assert lines[step - 1] != ref_lines[step - 1]
        assert not answers_match(extract_answer(text), task.answer)
        found = first_divergence(text, reference)
        assert found is not None
        assert found[0] == step
        assert found[1].startswith(f"Step {step} ")
    assert first_divergence(reference, reference) is None


def test_wrong_math_solution_propagates_the_error() -> None:
    solution = "A box holds 12 * 4 = <<12*4=48>>48 eggs.\nTwo boxes hold 48 * 2 = <<48*2=96>>96 eggs.\n#### 96"
    for seed in range(30):
        text, step = wrong_math_solution(solution, random.Random(seed))
        if step == 1:
            first = text.splitlines()[0]
            wrong = int(first.split("= ")[1].split()[0])
            assert text.splitlines()[-1] == f"Answer: {wrong * 2}"


def test_wrong_math_solution_without_steps_changes_the_answer() -> None:
    text, step = wrong_math_solution("The answer is clear.\n#### 7", random.Random(1))
    assert step == 2
    assert extract_answer(text) != "7"


# ---------------------------------------------------------------- code mutants


def test_code_mutants_parse_differ_and_keep_the_layout() -> None:
    kinds = set()
    for seed in range(40):
        mutant = mutate_code(CODE_SOLUTION, random.Random(seed))
        assert mutant is not None
        ast.parse(mutant.source)
        assert ast.unparse(ast.parse(mutant.source)) != ast.unparse(ast.parse(CODE_SOLUTION))
        assert not same_program(mutant.source, CODE_SOLUTION)
        kinds.add(mutant.kind)
        if mutant.kind != "drop_branch":
            assert "# only strictly positive values count" in mutant.source
    assert len(kinds) >= 4
    assert same_program(CODE_SOLUTION.replace("# only", "# just"), CODE_SOLUTION)
    body_only = CODE_SOLUTION[len(CODE_PROMPT) :]
    assert same_program(body_only, CODE_SOLUTION, prompt=CODE_PROMPT)


# ---------------------------------------------------------------- critic


async def test_critic_matches_configured_sensitivity_and_specificity() -> None:
    tasks = [math_task(i, 0.5) for i in range(50)]
    suite = Suite.of("critic", [*tasks, CODE_TASK, CODE_TASK_2])
    params = SimParams(sensitivity=0.7, specificity=0.9, seed=2)
    model = SimModel(suite, params)
    caught = missed = accepted = rejected = 0
    for i, task in enumerate([*tasks, CODE_TASK, CODE_TASK_2]):
        wrong = model_wrong(task, i)
        for candidate, truth in ((reference_text(task), True), (wrong, False)):
            messages = render("critic", task, candidate=candidate, scale_min=1, scale_max=10)
            for text in (await model.complete(ChatRequest(messages, n=20, seed=9))).texts:
                reply = json.loads(text)
                assert set(reply) == {"critique", "verdict", "score"}
                verdict, score = reply["verdict"], reply["score"]
                assert isinstance(score, int)
                assert 8 <= score <= 10 if verdict == "correct" else 1 <= score <= 4
                if truth:
                    accepted += verdict == "correct"
                    rejected += verdict == "incorrect"
                else:
                    caught += verdict == "incorrect"
                    missed += verdict == "correct"
    sens = caught / (caught + missed)
    spec = accepted / (accepted + rejected)
    assert caught + missed == accepted + rejected == 1040
    assert abs(sens - 0.7) < 4 * math.sqrt(0.21 / 1040)
    assert abs(spec - 0.9) < 4 * math.sqrt(0.09 / 1040)


def model_wrong(task: Task, seed: int) -> str:
    if task.kind == "code":
        mutant = mutate_code(task.solution or "", random.Random(seed))
        assert mutant is not None
        return f"```python\n{mutant.source}```"
    assert task.solution is not None
    return wrong_math_solution(task.solution, random.Random(seed))[0]


async def test_critic_names_the_first_wrong_step() -> None:
    task = math_task(3, 0.5)
    assert task.solution is not None
    model = SimModel(Suite.of("s", [task]), SimParams(sensitivity=1.0))
    for seed in range(10):
        wrong, step = wrong_math_solution(task.solution, random.Random(seed))
        messages = render("critic", task, candidate=wrong, scale_min=0, scale_max=1)
        reply = json.loads((await model.complete(ChatRequest(messages, seed=seed))).texts[0])
        assert reply["verdict"] == "incorrect"
        assert reply["critique"].startswith(f"Step {step} ")
        assert 0 <= reply["score"] <= 0.4


async def test_critic_explains_code_bugs_by_line() -> None:
    model = SimModel(Suite.of("s", [CODE_TASK_2]), SimParams(sensitivity=1.0))
    mutant = mutate_code(CODE_TASK_2.solution or "", random.Random(1))
    assert mutant is not None
    messages = render("critic", CODE_TASK_2, candidate=mutant.source, scale_min=1, scale_max=10)
    reply = json.loads((await model.complete(ChatRequest(messages))).texts[0])
    assert reply["verdict"] == "incorrect"
    assert "`" in reply["critique"]


# ---------------------------------------------------------------- refiner


async def test_refiner_rates_follow_the_critique() -> None:
    tasks = [math_task(i, 0.5) for i in range(40)]
    params = SimParams(fix_rate=0.6, fix_rate_wrong_critique=0.2, break_rate=0.3, seed=4)
    model = SimModel(Suite.of("refine", tasks), params)
    right_critique = '{"critique": "Step 2 is wrong.", "verdict": "incorrect", "score": 2}'
    wrong_critique = '{"critique": "All good.", "verdict": "correct", "score": 9}'
    samples = 25

    async def outcomes(candidate: str, critique: str, task: Task) -> list[str]:
        messages = render("refiner", task, candidate=candidate, critique=critique)
        return (await model.complete(ChatRequest(messages, n=samples, seed=1))).texts

    counts = {"fix": 0, "fix_wrong": 0, "break": 0, "kept": 0}
    for i, task in enumerate(tasks):
        wrong = model_wrong(task, i)
        right = reference_text(task)
        for text in await outcomes(wrong, right_critique, task):
            counts["fix"] += answers_match(extract_answer(text), task.answer)
        for text in await outcomes(wrong, wrong_critique, task):
            counts["fix_wrong"] += answers_match(extract_answer(text), task.answer)
        for text in await outcomes(right, right_critique, task):
            counts["break"] += not answers_match(extract_answer(text), task.answer)
        kept = await outcomes(right, wrong_critique, task)
        counts["kept"] += sum(text == right for text in kept)
    total = len(tasks) * samples
    for key, rate in (("fix", 0.6), ("fix_wrong", 0.2), ("break", 0.3)):
        measured = counts[key] / total
        assert abs(measured - rate) < 4 * math.sqrt(rate * (1 - rate) / total), (key, measured)
    assert counts["kept"] == total


# ---------------------------------------------------------------- output limits


async def test_max_tokens_and_stop_are_honoured() -> None:
    suite = make_suite(3)
    model = SimModel(suite, SimParams(skill=5.0))
    task = suite.tasks[1]
    full = (await model.complete(gen_request(task, seed=1))).completions[0]
    assert full.finish_reason == "stop"
    cut = (await model.complete(gen_request(task, seed=1, max_tokens=5))).completions[0]
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == 5
    assert full.text.startswith(cut.text)
    roomy = (await model.complete(gen_request(task, seed=1, max_tokens=10_000))).completions[0]
    assert roomy.text == full.text
    assert roomy.finish_reason == "stop"
    stopped = (await model.complete(gen_request(task, seed=1, stop=("\n",)))).completions[0]
    assert stopped.text == full.text.split("\n")[0]
    assert stopped.finish_reason == "stop"


async def test_n_beyond_max_n_is_refused() -> None:
    from deliberate.errors import UsageError

    model = SimModel(make_suite(1))
    with pytest.raises(UsageError):
        await model.complete(gen_request(math_task(0, 0.5), n=129))
