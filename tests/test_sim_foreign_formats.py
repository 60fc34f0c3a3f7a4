"""The sim following other libraries' formats: DSPy-style field prompts and rating requests."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest

from deliberate.models.base import ChatRequest, Message
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.core import HandlerContext
from deliberate.models.sim.handlers.foreign_formats import (
    ForeignFormatsHandler,
    OutputField,
    format_fields,
    is_rating_request,
    rated_response,
    rating_reply,
    read_field_prompt,
    read_scale,
)
from deliberate.tasks import load_suite
from deliberate.tasks.task import Task
from deliberate.verifiers.answer import answers_match, extract_answer

SUITE = load_suite("arithmetic")
TASK = SUITE.tasks[0]  # 4 trays of 6 muffins, 9 sold: 15
RIGHT = "Muffins baked: 4 * 6 = 24.\nMuffins left after selling 9: 24 - 9 = 15.\nAnswer: 15"
WRONG = "Muffins baked: 4 * 6 = 24.\nMuffins left after selling 9: 24 - 9 = 16.\nAnswer: 16"
TAIL = "Respond with the corresponding output fields, starting with the field "


def field_prompt(inputs: dict[str, str], outputs: list[tuple[str, str | None]]) -> str:
    """A user message in the form DSPy's ChatAdapter writes it."""
    parts = [f"[[ ## {k} ## ]]\n{v}" for k, v in inputs.items()]
    named = [
        f"`[[ ## {name} ## ]]`" + (f" (must be formatted as a valid Python {t})" if t else "")
        for name, t in outputs
    ]
    listing = named[0] if len(named) == 1 else ", then ".join(named)
    close = "and then ending with the marker for `[[ ## completed ## ]]`."
    return "\n\n".join(parts) + f"\n\n{TAIL}{listing}, {close}"


def ask(
    sim: SimModel,
    user: str,
    *,
    system: str = "",
    n: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[str]:
    messages = ((Message("system", system),) if system else ()) + (Message("user", user),)
    req = ChatRequest(messages=messages, n=n, seed=seed, temperature=temperature)
    return [c.text for c in sim.respond(req).completions]


def fields_of(reply: str) -> dict[str, str]:
    """Parse a ChatAdapter-style reply back into its fields."""
    assert reply.rstrip().endswith("[[ ## completed ## ]]")
    out: dict[str, str] = {}
    pieces = re.split(r"\[\[ ## (\w+) ## \]\]", reply)
    for name, value in zip(pieces[1::2], pieces[2::2], strict=True):
        if name != "completed":
            out[name] = value.strip()
    return out


# ---------------------------------------------------------------- reading the prompt


def test_field_prompt_is_read_with_inputs_outputs_and_types() -> None:
    text = field_prompt(
        {"question": TASK.prompt, "response": RIGHT}, [("reasoning", None), ("score", "float")]
    )
    fp = read_field_prompt(text)
    assert fp is not None
    assert fp.inputs == {"question": TASK.prompt, "response": RIGHT}
    assert fp.outputs == (OutputField("reasoning"), OutputField("score", "float"))
    assert fp.candidate() == RIGHT
    assert not fp.json_reply


def test_a_plain_question_or_our_templates_are_not_foreign() -> None:
    h = ForeignFormatsHandler()
    assert not h.matches(TASK.prompt)
    ours = (
        f"<task>\n{TASK.prompt}\n</task>\n\n<candidate>\n{RIGHT}\n</candidate>\n\n"
        "Judge whether the candidate correctly solves the task. Use a score from 1 to 10."
    )
    assert not h.matches(ours)
    assert not is_rating_request(
        "A tap fills a tank at a rate of 3 litres a minute. How long "
        "does it take to fill 12 litres? Give the answer in minutes."
    )


@pytest.mark.parametrize(
    ("name", "typ", "kind"),
    [
        ("reasoning", "str", "reasoning"),
        ("answer", "str", "answer"),
        ("answer", "float", "answer"),
        ("score", "float", "score"),
        ("rating", "int", "score"),
        ("is_correct", "bool", "verdict"),
        ("advice", "dict[str, str]", "advice"),
        ("discussion", "str", "reasoning"),
        ("summary", "str", "text"),
        ("x", "float", "score"),
    ],
)
def test_output_fields_are_classified_by_name_then_type(name: str, typ: str, kind: str) -> None:
    assert OutputField(name, typ).kind == kind


def test_scales_are_read_from_the_first_text_that_declares_one() -> None:
    assert read_scale(["Rate the above response:", "on a scale from 0 to 10, where"]) == (0, 10)
    assert read_scale(["Evaluate the quality of this conversation on a scale from 0 to 1"]) == (
        0,
        1,
    )
    assert read_scale(["Give a score from 10 to 1."]) == (1, 10)
    assert read_scale(["nothing here"]) == (1, 10)


def test_optillms_rating_prompts_are_rating_requests() -> None:
    assert is_rating_request("Rate the above response:")
    assert is_rating_request(
        "Evaluate the quality of this conversation on a scale from 0 to 1, where 0 is poor and "
        "1 is excellent. Consider factors such as coherence, relevance, and engagement. "
        "Respond with only a number."
    )


# ---------------------------------------------------------------- generation


def solve(sim: SimModel, task: Task, **extra: str) -> list[dict[str, str]]:
    text = field_prompt({"question": task.prompt, **extra}, [("reasoning", None), ("answer", None)])
    return [fields_of(r) for r in ask(sim, text, n=20, seed=3)]


def test_a_generation_fills_reasoning_and_answer_and_skill_decides() -> None:
    strong = SimModel(SUITE, SimParams(skill=10))
    weak = SimModel(SUITE, SimParams(skill=-10))
    for task in SUITE.tasks[:5]:
        for f in solve(strong, task):
            assert answers_match(f["answer"], task.answer)
            assert extract_answer(f["reasoning"]) == extract_answer(f["answer"])
        assert not any(answers_match(f["answer"], task.answer) for f in solve(weak, task))


def test_a_generation_is_right_about_as_often_as_the_core_generator() -> None:
    sim = SimModel(SUITE, SimParams(skill=0.3))
    task = next(t for t in SUITE.tasks if 0.25 < sim.p_correct(t) < 0.75)
    text = field_prompt({"question": task.prompt}, [("reasoning", None), ("answer", None)])
    replies = [fields_of(r)["answer"] for r in ask(sim, text, n=128, seed=1)]
    rate = sum(answers_match(a, task.answer) for a in replies) / len(replies)
    assert abs(rate - sim.p_correct(task)) < 0.15


def test_a_hint_gives_a_wrong_draw_the_refiners_chance() -> None:
    sure = SimModel(SUITE, SimParams(skill=-10, fix_rate=1.0))
    never = SimModel(SUITE, SimParams(skill=-10, fix_rate=0.0))
    hint = "The last answer was wrong: step 2 subtracts wrongly."
    assert all(answers_match(f["answer"], TASK.answer) for f in solve(sure, TASK, hint_=hint))
    assert not any(answers_match(f["answer"], TASK.answer) for f in solve(never, TASK, hint_=hint))
    # "N/A" is no hint
    assert not any(answers_match(f["answer"], TASK.answer) for f in solve(sure, TASK, hint_="N/A"))


def test_the_json_form_gets_one_json_object() -> None:
    sim = SimModel(SUITE, SimParams(skill=10))
    text = (
        f"[[ ## question ## ]]\n{TASK.prompt}\n\nRespond with a JSON object in the following "
        "order of fields: `reasoning`, then `answer` (must be formatted as a valid Python "
        "float)."
    )
    obj = json.loads(ask(sim, text)[0])
    assert set(obj) == {"reasoning", "answer"}
    assert answers_match(str(obj["answer"]), TASK.answer)


def test_an_unknown_question_gets_a_valid_reply_all_the_same() -> None:
    sim = SimModel(SUITE)
    text = field_prompt(
        {"question": "What is the capital of Belgium?"}, [("reasoning", None), ("answer", None)]
    )
    f = fields_of(ask(sim, text)[0])
    assert set(f) == {"reasoning", "answer"} and f["answer"]


# ---------------------------------------------------------------- judging


def judge_scores(sim: SimModel, response: str, n: int = 30) -> list[float]:
    text = field_prompt({"question": TASK.prompt, "response": response}, [("score", "float")])
    return [float(fields_of(r)["score"]) for r in ask(sim, text, n=n, seed=5)]


def test_a_judgement_scores_with_the_critics_error_rates() -> None:
    perfect = SimModel(SUITE, SimParams(sensitivity=1.0, specificity=1.0))
    assert min(judge_scores(perfect, RIGHT)) >= 7
    assert max(judge_scores(perfect, WRONG)) <= 4
    blind = SimModel(SUITE, SimParams(sensitivity=0.0, specificity=0.0))
    assert max(judge_scores(blind, RIGHT)) <= 4  # every right response called wrong
    assert min(judge_scores(blind, WRONG)) >= 7


def test_the_judgement_reads_a_scale_the_prompt_declares() -> None:
    sim = SimModel(SUITE, SimParams(sensitivity=1.0, specificity=1.0))
    text = field_prompt(
        {"rubric": "Give a score from 0 to 100.", "question": TASK.prompt, "response": RIGHT},
        [("score", "int")],
    )
    scores = [int(fields_of(r)["score"]) for r in ask(sim, text, n=10, seed=2)]
    assert all(70 <= s <= 100 for s in scores)


def test_feedback_fields_blame_a_wrong_output_and_advise_each_module() -> None:
    sim = SimModel(SUITE, SimParams(sensitivity=1.0, specificity=1.0))

    def feedback(output: dict[str, str]) -> dict[str, str]:
        text = field_prompt(
            {
                "program_inputs": json.dumps({"question": TASK.prompt}, indent=2),
                "program_outputs": json.dumps(output, indent=2),
                "reward_value": "2.0",
                "module_names": json.dumps(["predict", "judge"], indent=2),
            },
            [("discussion", None), ("advice", "dict[str, str]")],
        )
        return fields_of(ask(sim, text)[0])

    bad = feedback({"reasoning": WRONG.rsplit("\n", 1)[0], "answer": "16"})
    advice = json.loads(bad["advice"])
    assert set(advice) == {"predict", "judge"}
    assert "24 - 9" in advice["predict"] and "24 - 9" in bad["discussion"]
    good = feedback({"reasoning": RIGHT.rsplit("\n", 1)[0], "answer": "15"})
    assert json.loads(good["advice"]) == {"predict": "N/A", "judge": "N/A"}


def test_replies_are_deterministic_per_request() -> None:
    sim = SimModel(SUITE)
    text = field_prompt({"question": TASK.prompt}, [("reasoning", None), ("answer", None)])
    assert ask(sim, text, n=4, seed=9) == ask(sim, text, n=4, seed=9)
    assert ask(sim, text, n=4, seed=9) != ask(sim, text, n=4, seed=10)


def test_format_fields_writes_what_read_field_prompt_asked_for() -> None:
    fp = read_field_prompt(field_prompt({"q": "x"}, [("a", None), ("b", "int")]))
    assert fp is not None
    assert format_fields(fp, {"a": "one", "b": "2"}) == (
        "[[ ## a ## ]]\none\n\n[[ ## b ## ]]\n2\n\n[[ ## completed ## ]]"
    )


# ---------------------------------------------------------------- rating requests


BON_SYSTEM = (
    "Rate the following responses on a scale from 0 to 10, where 0 is poor and 10 is "
    "excellent. Consider factors such as relevance, coherence, and helpfulness. "
    "Respond with only a number."
)


def bon_rating(response: str) -> tuple[Message, ...]:
    """The conversation optillm's best-of-N sends to rate one response."""
    return (
        Message("system", ""),
        Message("user", f"User: {TASK.prompt}"),
        Message("system", BON_SYSTEM),
        Message("assistant", response),
        Message("user", "Rate the above response:"),
    )


def test_a_rating_request_gets_a_bare_number_on_its_scale() -> None:
    sim = SimModel(SUITE)
    for response in (RIGHT, WRONG):
        req = ChatRequest(messages=bon_rating(response), n=8, seed=1, temperature=0.1)
        for c in sim.respond(req).completions:
            assert 0 <= float(c.text) <= 10  # 0-10 read from the system message, else 1-10
    mcts = (
        Message("system", ""),
        Message("assistant", RIGHT),
        Message(
            "user",
            (
                "Evaluate the quality of this conversation on a scale from 0 to 1, where 0 is "
                "poor and 1 is excellent. Respond with only a number."
            ),
        ),
    )
    for c in sim.respond(ChatRequest(messages=mcts, n=8, seed=1)).completions:
        assert 0 <= float(c.text) <= 1


def test_the_rated_response_is_the_last_assistant_message_before_the_question() -> None:
    assert rated_response(bon_rating(RIGHT)) == RIGHT
    assert rated_response((Message("user", "Rate the above response:"),)) is None


def context_with_messages(
    sim: SimModel, messages: tuple[Message, ...], seed: int, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The context the sim hands this handler for ``messages``, plus the messages (what a
    context carries once :class:`HandlerContext` has them)."""
    seen: list[HandlerContext] = []

    def spy(self: ForeignFormatsHandler, ctx: HandlerContext) -> str:
        seen.append(ctx)
        return "0"

    with monkeypatch.context() as m:
        m.setattr(ForeignFormatsHandler, "respond", spy)
        sim.respond(ChatRequest(messages=messages, seed=seed, temperature=0.1))
    ctx = seen[0]
    names = ("sim", "parsed", "task", "behaviour", "draws")
    return SimpleNamespace(**{k: getattr(ctx, k) for k in names}, messages=messages)


def test_given_the_conversation_the_rating_judges_the_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = SimModel(SUITE, SimParams(sensitivity=1.0, specificity=1.0))
    for seed in range(10):
        right = rating_reply(context_with_messages(sim, bon_rating(RIGHT), seed, monkeypatch))
        wrong = rating_reply(context_with_messages(sim, bon_rating(WRONG), seed, monkeypatch))
        assert 7 <= float(right) <= 10  # the system message's 0-10 scale
        assert 0 <= float(wrong) <= 4


@pytest.mark.skipif(
    "messages" not in HandlerContext.__dataclass_fields__,
    reason="HandlerContext does not carry the request's messages yet",
)
def test_end_to_end_the_rating_judges_the_response() -> None:
    sim = SimModel(SUITE, SimParams(sensitivity=1.0, specificity=1.0))
    right = sim.respond(ChatRequest(messages=bon_rating(RIGHT), n=10, seed=1, temperature=0.1))
    wrong = sim.respond(ChatRequest(messages=bon_rating(WRONG), n=10, seed=1, temperature=0.1))
    assert min(float(c.text) for c in right.completions) >= 7
    assert max(float(c.text) for c in wrong.completions) <= 4
