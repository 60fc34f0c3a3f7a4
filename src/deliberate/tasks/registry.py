"""Turn a suite spec string into a :class:`Suite`.

One string names any suite, the same in YAML, on the command line and in a server
request:

- a built-in name: ``arithmetic``, ``python``, ``solidity``, ``evidence``;
- ``LOADER:PATH`` with LOADER one of ``humaneval``, ``mbpp_plus``, ``gsm8k``, ``jsonl``,
  ``json``, ``parquet``, ``smartbugs`` (the SmartBugs-curated folder);
- a bare path ending ``.jsonl``, ``.json``, ``.parquet`` (optionally ``.gz``), read with
  the generic loader for its format and the default field mapping.

Relative paths are resolved against the current directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deliberate.errors import ConfigError, UnknownNameError
from deliberate.tasks.builtin import BUILTIN_SUITES, load_builtin
from deliberate.tasks.loaders import (
    load_gsm8k,
    load_humaneval,
    load_json,
    load_jsonl,
    load_mbpp_plus,
    load_parquet,
)
from deliberate.tasks.smartbugs import load_smartbugs
from deliberate.tasks.task import Suite

__all__ = ["builtin_suites", "load_suite"]

_LOADERS: dict[str, Callable[[Path], Suite]] = {
    "humaneval": load_humaneval,
    "mbpp_plus": load_mbpp_plus,
    "gsm8k": load_gsm8k,
    "jsonl": load_jsonl,
    "json": load_json,
    "parquet": load_parquet,
    "smartbugs": load_smartbugs,
}

_BY_SUFFIX: tuple[tuple[str, Callable[[Path], Suite]], ...] = (
    (".jsonl", load_jsonl),
    (".jsonl.gz", load_jsonl),
    (".json", load_json),
    (".json.gz", load_json),
    (".parquet", load_parquet),
    (".parquet.gz", load_parquet),
)


def builtin_suites() -> dict[str, str]:
    """Name -> one-line description of each built-in suite."""
    return {name: spec.description for name, spec in BUILTIN_SUITES.items()}


def load_suite(spec: str, *, limit: int | None = None) -> Suite:
    """The suite named by ``spec``, cut to its first ``limit`` tasks when given."""
    if limit is not None and limit < 0:
        raise ConfigError(f"suite limit must be 0 or more, got {limit}")
    return _load(spec.strip()).head(limit)


def _load(spec: str) -> Suite:
    if spec in BUILTIN_SUITES:
        return load_builtin(spec)
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in _LOADERS:
        if not rest.strip():
            raise ConfigError(f"suite {spec!r}: give a file after '{prefix}:'")
        return _LOADERS[prefix](_resolve(rest.strip()))
    lowered = spec.lower()
    for suffix, loader in _BY_SUFFIX:
        if lowered.endswith(suffix):
            return loader(_resolve(spec))
    raise UnknownNameError(
        f"unknown suite {spec!r}: use a built-in suite ({', '.join(BUILTIN_SUITES)}), "
        f"LOADER:PATH with LOADER one of {', '.join(_LOADERS)}, "
        "or a path ending .jsonl, .json, .jsonl.gz or .parquet"
    )


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path.cwd() / p
