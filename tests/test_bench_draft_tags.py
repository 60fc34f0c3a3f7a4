"""bench's DraftTags: unique per request and sample, and the same from run to run."""

from __future__ import annotations

import asyncio

from bench.parallel_rollouts import DraftTags

from deliberate.models.base import ChatModel, ChatRequest, Message, ModelWrapper
from deliberate.models.sim.core import SimModel
from deliberate.tasks import load_suite

SUITE = load_suite("arithmetic")


class OnPort(ModelWrapper):
    """The sim under the id an HTTP backend would have: its URL, with a port."""

    def __init__(self, inner: ChatModel, port: int) -> None:
        super().__init__(inner)
        self.port = port

    @property
    def model_id(self) -> str:
        return f"sim@http://127.0.0.1:{self.port}/v1"


def _texts(model: ChatModel, role: str, n: int = 3) -> list[str]:
    req = ChatRequest(messages=(Message("user", SUITE.tasks[0].prompt),), n=n, seed=1,
                      temperature=0.8, tags={"role": role})
    return [c.text for c in asyncio.run(model.complete(req)).completions]


def test_tags_follow_the_request_not_the_server_port() -> None:
    """Benchmarks start their server on a fresh port each run: runs must still match."""
    first = _texts(DraftTags(OnPort(SimModel(SUITE), 40001)), "generator")
    again = _texts(DraftTags(OnPort(SimModel(SUITE), 40002)), "generator")
    assert first == again
    tags = [t.splitlines()[0] for t in first]
    assert all(t.startswith("Draft ") for t in tags) and len(set(tags)) == 3


def test_only_candidates_are_tagged() -> None:
    judged = _texts(DraftTags(SimModel(SUITE)), "judge", n=1)
    assert not judged[0].startswith("Draft ")
