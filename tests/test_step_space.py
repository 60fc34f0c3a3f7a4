"""Step splitting, terminal detection, step-score aggregation and the sim step proposer."""

from __future__ import annotations

import pytest

from deliberate.models.sim.handlers.step_proposer import carried, continue_line
from deliberate.search.step_space import (
    StepSplitter,
    aggregate,
    is_final_step,
    prefix_step_scores,
)


def test_splitting_modes() -> None:
    assert StepSplitter("line").split("a\n\n b \nc") == ["a", "b", "c"]
    assert StepSplitter("blank").split("a\nb\n\n c \n\n\n") == ["a\nb", "c"]
    assert StepSplitter("numbered").split("Intro\n1. a\nmore\n2) b\nStep 3: c") == [
        "Intro", "a\nmore", "b", "c"]
    assert StepSplitter("delimiter", "||").split("a||b|| ||c") == ["a", "b", "c"]
    assert StepSplitter("blank").join(["a", "b"]) == "a\n\nb"
    assert StepSplitter("line").first("x = 1\ny = 2") == "x = 1"
    with pytest.raises(ValueError, match="delimiter"):
        StepSplitter("delimiter")


def test_final_step_detection() -> None:
    assert is_final_step("Answer: 15")
    assert is_final_step("final answer: 3")
    assert not is_final_step("The answer is near: 4 * 6 = 24")


def test_prefix_scores_and_aggregation() -> None:
    assert prefix_step_scores(-1, 3) == [1.0, 1.0, 1.0]
    assert prefix_step_scores(2, 4) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="first wrong step"):
        prefix_step_scores(5, 4)
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "product") == pytest.approx(0.36)
    with pytest.raises(ValueError, match="no step scores"):
        aggregate([], "min")


def test_wrong_value_is_carried_forward() -> None:
    ref = ["Books: 5 * 18 = 90.", "Left: 90 - 7 = 83.", "Answer: 83"]
    subs = carried(ref, ["Books: 5 * 18 = 91."])
    assert continue_line(ref[1], subs) == "Left: 91 - 7 = 84."
    assert continue_line(ref[2], subs) == "Answer: 84"
