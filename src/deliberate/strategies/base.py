"""What every strategy is: a plain object with a frozen config that grows a tree."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from deliberate.config import describe_validation_error
from deliberate.engine.context import TaskContext
from deliberate.errors import ConfigError, UnknownNameError
from deliberate.tree import NodeRecord


class StrategyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(slots=True)
class StrategyResult:
    """The chosen node (None when nothing could be produced) and why."""

    node: NodeRecord | None
    note: str = ""

    @property
    def answer(self) -> str | None:
        return self.node.answer if self.node is not None else None


class Strategy(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[StrategyConfig]]

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    @abstractmethod
    async def run(self, ctx: TaskContext) -> StrategyResult:
        """Grow ``ctx.tree`` and return the chosen node; never raise BudgetExceeded."""


def strategies() -> dict[str, type[Strategy]]:
    """Built-in strategies plus those installed under the ``deliberate.strategies`` group."""
    from deliberate.strategies.best_of_n import BestOfN
    from deliberate.strategies.self_consistency import SelfConsistency

    table: dict[str, type[Strategy]] = {s.name: s for s in (BestOfN, SelfConsistency)}
    for ep in entry_points(group="deliberate.strategies"):
        cls = ep.load()
        table[cls.name] = cls
    return table


def build_strategy(name: str, params: dict[str, Any]) -> Strategy:
    table = strategies()
    if name not in table:
        raise UnknownNameError(f"unknown strategy {name!r}; known: {', '.join(sorted(table))}")
    cls = table[name]
    try:
        config = cls.Config.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, f"strategy {name}")) from exc
    return cls(config)
