"""``deliberate models``, ``deliberate sim serve`` and ``deliberate replay convert``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deliberate.cli.common import console, parse_params
from deliberate.errors import ConfigError, UsageError
from deliberate.models.registry import backends, default_model_string

sim_app = typer.Typer(help="The simulated model as an OpenAI-compatible HTTP server.",
                      no_args_is_help=True)
replay_app = typer.Typer(help="Recorded completions for the replay model.", no_args_is_help=True)


def _status(scheme: str) -> str:
    if scheme == "sim":
        return "available (offline)"
    if scheme == "openai":
        base = os.environ.get("DELIBERATE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        key = os.environ.get("DELIBERATE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if base:
            return f"configured: {base}"
        return "configured: api.openai.com" if key else "not configured (set DELIBERATE_BASE_URL)"
    if scheme == "litellm":
        ok = importlib.util.find_spec("litellm") is not None
        return "installed" if ok else 'not installed: pip install "deliberate[litellm]"'
    if scheme == "replay":
        return "available (needs a JSONL file)"
    return "plugin"


def models_cmd() -> None:
    """Which model backends exist, which are configured, and the default model."""
    t = Table(title="model backends", header_style="bold")
    t.add_column("backend")
    t.add_column("what it is")
    t.add_column("status")
    for scheme, (_factory, desc) in sorted(backends().items()):
        t.add_row(scheme, desc, _status(scheme))
    console.print(t)
    try:
        default = default_model_string()
    except ConfigError as exc:
        default = f"(misconfigured: {exc})"
    console.print(f"default model: [bold]{default}[/]")
    console.print(escape("model strings: SCHEME[:NAME][@BASE_URL][?key=value&…], e.g. "
                         "openai:Qwen2.5-7B@http://localhost:8000/v1, sim:arithmetic?skill=0.7, "
                         "replay:samples.jsonl?seed=1"))


@sim_app.command("serve")
def sim_serve(
    suite: Annotated[str, typer.Option(help="suite the simulated model knows the answers of")] = "arithmetic",
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: pick a free one)")] = 8000,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="sim parameter KEY=VALUE, e.g. skill=0.7")] = None,
    server: Annotated[list[str] | None, typer.Option("--server", help="server setting KEY=VALUE, e.g. fail_rate=0.1")] = None,
) -> None:
    """Serve the sim model over HTTP, OpenAI-compatible, for end-to-end use."""
    from pydantic import ValidationError

    from deliberate.config import describe_validation_error
    from deliberate.models.sim import SimParams
    from deliberate.models.sim.server import ServerConfig, serve
    from deliberate.tasks.registry import load_suite

    s = load_suite(suite)
    try:
        sim_params = SimParams.model_validate(parse_params(param))
        server_cfg = ServerConfig.model_validate({**parse_params(server), "host": host,
                                                  "port": port})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "sim serve")) from exc
    console.print(f"sim model on suite {suite!r} ({len(s)} tasks) at "
                  f"http://{host}:{port}/v1 — simulated output, not a real LLM")
    serve(s, sim_params, server_cfg)


@replay_app.command("convert")
def replay_convert(
    kind: Annotated[str, typer.Argument(help="gsm8k (GSM8K model solutions) or codet (CodeT samples)")],
    src: Annotated[Path, typer.Argument(help="source file (.jsonl.gz)")],
    dst: Annotated[Path, typer.Argument(help="replay JSONL to write")],
    humaneval: Annotated[Path | None, typer.Option(help="HumanEval.jsonl.gz, to name CodeT tasks by HumanEval id")] = None,
) -> None:
    """Turn a recorded-output dataset into the replay format."""
    from deliberate.models import recorded

    if not src.exists():
        raise UsageError(f"cannot read {src}: no such file")
    if kind == "gsm8k":
        count = recorded.gsm8k_model_solutions_to_replay(src, dst)
    elif kind == "codet":
        count = recorded.codet_samples_to_replay(src, dst, humaneval=humaneval)
    else:
        raise UsageError(f"unknown dataset kind {kind!r}; use gsm8k or codet")
    console.print(f"wrote {count} replay records to {dst}")
