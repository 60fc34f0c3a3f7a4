"""``deliberate serve``: strategies behind an OpenAI-compatible API, and the web view."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from deliberate.cli.common import console
from deliberate.errors import ConfigError


def parse_upstreams(items: list[str] | None) -> dict[str, str] | None:
    """``NAME=MODEL`` or ``MODEL`` (named after the model: ``sim``, ``gpt-4o-mini``)."""
    if not items:
        return None
    from deliberate.server.config import upstream_name

    out: dict[str, str] = {}
    for item in items:
        name, sep, model = item.partition("=")
        if sep and name.strip() and not any(c in name for c in ":?@/"):
            out[name.strip()] = model.strip()
        else:
            out[upstream_name(item.strip())] = item.strip()
    return out


def serve_cmd(
    config_file: Annotated[Path | None, typer.Option("--config", "-c", help="YAML serve config (docs/server.md); flags override it")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1; beyond loopback only with API keys)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000; 0: pick a free one)")] = None,
    store: Annotated[str | None, typer.Option(help="database URL or SQLite path for the runs")] = None,
    upstream: Annotated[list[str] | None, typer.Option("--upstream", "-u", help="upstream model NAME=MODEL_STRING or MODEL_STRING (repeatable; the first is the default)")] = None,
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help="client API key (repeatable; also DELIBERATE_SERVE_API_KEYS)")] = None,
) -> None:
    """Serve strategies as an OpenAI-compatible API (/v1) and the runs in a browser."""
    from deliberate.server.app import serve
    from deliberate.server.config import ServeConfig

    overrides: dict[str, Any] = {"host": host, "port": port, "store": store,
                                 "upstreams": parse_upstreams(upstream),
                                 "api_keys": list(api_key) if api_key else None}
    cfg = ServeConfig.load(config_file, overrides=overrides)
    if upstream and not (config_file and cfg.default_upstream):
        first = next(iter(parse_upstreams(upstream) or {}))
        cfg = ServeConfig.from_mapping({**cfg.model_dump(), "default_upstream": first})
    cfg.check_exposure()
    ups = cfg.effective_upstreams()
    default = cfg.default_upstream_name()
    if not ups:
        raise ConfigError("no upstream model: give --upstream MODEL_STRING")

    def ready(url: str) -> None:
        console.print(f"deliberate serve on {url}/v1 (web view: {url}/runs)", highlight=False,
                      soft_wrap=True)
        for name, model in ups.items():
            mark = " (default)" if name == default else ""
            console.print(f"  upstream {name}: {model}{mark}", highlight=False, soft_wrap=True)
        if not cfg.api_keys:
            console.print("  no API keys: loopback only", highlight=False)

    serve(cfg, on_ready=ready)
