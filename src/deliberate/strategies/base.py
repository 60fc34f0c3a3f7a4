"""What every strategy is: a plain object with a frozen config that grows a tree."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from deliberate.config import describe_validation_error
from deliberate.engine.context import TaskContext
from deliberate.errors import ConfigError, UnknownNameError
from deliberate.plugins import installed
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


def available_strategies() -> dict[str, type[Strategy]]:
    """Built-in strategies (every module of this package) plus installed plugins.

    A plugin registers a :class:`Strategy` subclass under the ``deliberate.strategies``
    entry-point group.
    """
    table = dict(_builtin_strategies())
    for ep in installed("deliberate.strategies"):
        cls = ep.load()
        table[cls.name] = cls
    return table


@functools.cache
def _builtin_strategies() -> dict[str, type[Strategy]]:
    # Found once per process: the package's modules do not change under it, and
    # listing them costs a directory scan per run. Callers get a copy.
    pkg = importlib.import_module("deliberate.strategies")
    table: dict[str, type[Strategy]] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy
                    and obj.__module__ == mod.__name__ and "name" in vars(obj)):
                table[obj.name] = obj
    return table


def build_strategy(name: str, params: dict[str, Any]) -> Strategy:
    table = available_strategies()
    if name not in table:
        raise UnknownNameError(f"unknown strategy {name!r}; known: {', '.join(sorted(table))}")
    cls = table[name]
    try:
        config = cls.Config.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, f"strategy {name}")) from exc
    return cls(config)
