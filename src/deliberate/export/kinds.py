"""The export kinds, one module each, found by name."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from deliberate.errors import UnknownNameError
from deliberate.export.base import Extractor

__all__ = ["KIND_MODULES", "Kind", "get_kind", "kind_names"]


@dataclass(frozen=True, slots=True)
class Kind:
    """One export kind: what it extracts from a task's tree, and the columns it writes."""

    name: str
    extract: Extractor
    description: str
    columns: Sequence[str]
    """The TRL columns of a row (plain form), in order."""


KIND_MODULES: dict[str, str] = {
    "dpo": "deliberate.export.dpo",
    "kto": "deliberate.export.kto",
    "sft": "deliberate.export.sft",
    "critique": "deliberate.export.critique",
    "revision": "deliberate.export.revision",
    "steps": "deliberate.export.steps",
}


def kind_names() -> list[str]:
    return list(KIND_MODULES)


def get_kind(name: str) -> Kind:
    """The kind called ``name``; a one-line error naming the known ones otherwise."""
    module = KIND_MODULES.get(name)
    if module is None:
        raise UnknownNameError(f"unknown export kind {name!r}; known: {', '.join(KIND_MODULES)}")
    kind = importlib.import_module(module).KIND
    assert isinstance(kind, Kind), f"{module}.KIND is not a Kind"
    return kind
