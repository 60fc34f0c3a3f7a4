"""``deliberate strategies``: what strategies exist and what their parameters are."""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table

from deliberate.cli.common import console
from deliberate.strategies.base import available_strategies


def strategies_cmd() -> None:
    """List strategies with their parameters (set them with -p KEY=VALUE)."""
    t = Table(title="strategies", header_style="bold", show_lines=True)
    t.add_column("strategy", style="bold", no_wrap=True)
    t.add_column("what it does")
    t.add_column("parameters (default)")
    for name, cls in sorted(available_strategies().items()):
        doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
        summary = doc.strip().split("\n\n")[0].replace("\n", " ")
        params = []
        for field, info in cls.Config.model_fields.items():
            default = info.get_default(call_default_factory=True)
            desc = f": {info.description}" if info.description else ""
            params.append(f"{field} ({default!r}){desc}")
        t.add_row(name, escape(summary), escape("\n".join(params)))
    console.print(t)
