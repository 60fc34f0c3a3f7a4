"""Shared bits of the CLI: consoles, value parsing, store opening."""

from __future__ import annotations

from typing import Any

import yaml
from rich.console import Console

from deliberate.errors import ConfigError

console = Console()
console_err = Console(stderr=True)


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (8 → int, true → bool)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"parameter {item!r} must look like key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"parameter {item!r}: cannot read value {raw!r}") from exc
    return out


def fmt_float(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"
