"""DSPy's side of bench/peers.py: run in the peer environment, never imported by the project.

DSPy and optillm pin dependencies that conflict with ours, so they live in their own
virtual environment (``bench/.peers/venv``) and this script is executed by that
environment's Python. It speaks JSON lines on stdin/stdout:

1. the first line configures it: ``{"base_url": ..., "warmup": "<a prompt>"}``. It
   imports DSPy, points ``dspy.LM("openai/sim")`` at the latency server, makes one
   unmeasured call (litellm's client set-up), and answers ``{"ready": true, ...}``
   with the versions it runs;
2. every later line is a job: ``{"workload", "tasks": [{"id", "prompt"}],
   "concurrency", "n", "threshold", "engine"}`` (``engine``: DSPy's LM engine for the
   program, ``auto`` by default); the answer is ``{"wall_s", "answers": {id:
   text or null}, "errors": [...], "settings": {...}}``, the wall time measured
   around DSPy's own parallel batch (``Module.batch(num_threads=concurrency)``).

Workloads, each DSPy's documented way of doing it:

- ``best_of_n``: ``dspy.BestOfN(ChainOfThought("question -> answer"), N=n,
  reward_fn, threshold)``. The reward is an LLM judge (a ``Predict`` of the
  ``Judge`` signature below, temperature 0), so each attempt costs a generation
  and a judgement, as a judged best-of-N does in deliberate and optillm;
- ``self_consistency``: ``ChainOfThought(..., n=n)`` (the n samples in one request)
  and ``dspy.majority`` over the answers;
- ``refine``: ``dspy.Refine(ChainOfThought(...), N=n, reward_fn, threshold)`` with
  the same judge; between attempts DSPy asks the model for advice
  (``OfferFeedback``) and passes it to the next attempt as a hint.

The response cache is off (``cache=False`` and ``configure_cache``), no seed is sent
(DSPy sends none), and DSPy's own prints go to stderr so stdout stays JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PROTOCOL_OUT = sys.stdout
sys.stdout = sys.stderr  # BestOfN/Refine print attempt failures; keep them off the protocol
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of litellm's price map

import dspy  # noqa: E402


class Judge(dspy.Signature):
    """Judge whether the response correctly answers the question. Give a score from 0 to
    10, where 10 means certainly correct and 0 means certainly wrong."""

    question: str = dspy.InputField()
    response: str = dspy.InputField()
    score: float = dspy.OutputField()


JUDGE_LM: Any = None


def judge_reward(args: dict[str, Any], pred: Any) -> float:
    """The judge's score of a prediction (its reasoning and its answer)."""
    judge = dspy.Predict(Judge)
    judge.set_lm(JUDGE_LM)
    response = f"{pred.reasoning}\nAnswer: {pred.answer}"
    try:
        return float(judge(question=args["question"], response=response).score)
    except (TypeError, ValueError):
        return 0.0


class SelfConsistency(dspy.Module):
    """n samples in one request, then the majority answer."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.cot = dspy.ChainOfThought("question -> answer", n=n)

    def forward(self, question: str) -> Any:
        return dspy.majority(self.cot(question=question))


def program(workload: str, n: int, threshold: float | None) -> Any:
    cot = dspy.ChainOfThought("question -> answer")
    if workload == "best_of_n":
        bar = float("inf") if threshold is None else threshold
        return dspy.BestOfN(module=cot, N=n, reward_fn=judge_reward, threshold=bar)
    if workload == "self_consistency":
        return SelfConsistency(n)
    if workload == "refine":
        bar = float("inf") if threshold is None else threshold
        return dspy.Refine(module=cot, N=n, reward_fn=judge_reward, threshold=bar)
    raise ValueError(f"unknown workload {workload!r}")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("dspy", "litellm", "openai"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    tasks = job["tasks"]
    prog = program(job["workload"], int(job["n"]), job.get("threshold"))
    engine = job.get("engine", "auto")
    if engine != "auto":
        # e.g. "litellm", which keeps the backend's n (one request for n samples)
        prog.set_lm(dspy.settings.lm.copy(engine=engine))
    examples = [dspy.Example(question=t["prompt"]).with_inputs("question") for t in tasks]
    t0 = time.perf_counter()
    results, _failed, exceptions = prog.batch(
        examples,
        num_threads=int(job["concurrency"]),
        max_errors=len(examples) + 1,
        return_failed_examples=True,
        disable_progress_bar=True,
        timeout=0,  # no straggler resubmission: it would repeat a task's calls
    )
    wall = time.perf_counter() - t0
    answers: dict[str, str | None] = {}
    for t, pred in zip(tasks, results, strict=True):
        answer = getattr(pred, "answer", None) if pred is not None else None
        answers[t["id"]] = None if answer is None else str(answer)
    return {
        "workload": job["workload"],
        "wall_s": wall,
        "answers": answers,
        "errors": [f"{type(e).__name__}: {e}" for e in exceptions][:5],
        "failed": sum(1 for r in results if r is None),
    }


def send(obj: dict[str, Any]) -> None:
    PROTOCOL_OUT.write(json.dumps(obj) + "\n")
    PROTOCOL_OUT.flush()


def main() -> int:
    global JUDGE_LM
    first = sys.stdin.readline()
    if not first:
        return 1
    setup = json.loads(first)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = dspy.LM(
        "openai/sim",
        api_base=setup["base_url"],
        api_key="bench",
        cache=False,
        temperature=1.0,
        max_tokens=1024,
        num_retries=0,
    )
    JUDGE_LM = lm.copy(temperature=0.0)
    dspy.configure(lm=lm, adapter=dspy.ChatAdapter())
    for engine in ("auto", "litellm"):  # each engine's client is set up on its first call
        warm = dspy.Predict("question -> answer")
        warm.set_lm(lm.copy(engine=engine))
        warm(question=setup["warmup"])
    send(
        {
            "ready": True,
            "versions": versions(),
            "lm": {
                "model": "openai/sim",
                "temperature": 1.0,
                "judge_temperature": 0.0,
                "max_tokens": 1024,
                "cache": False,
                "num_retries": 0,
                "adapter": "ChatAdapter",
            },
        }
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            send(run_job(job))
        except Exception as exc:  # reported to the parent, which records it as the row's failure
            send({"workload": job.get("workload"), "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
