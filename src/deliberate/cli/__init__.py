"""The ``deliberate`` command: one module per verb group, one line per expected error."""

from __future__ import annotations

import importlib
import logging
import sys

import click
import typer
from rich.markup import escape

from deliberate.cli import eval as _eval
from deliberate.cli import export as _export
from deliberate.cli import inspect as _inspect
from deliberate.cli import models as _models
from deliberate.cli import report as _report
from deliberate.cli import run as _run
from deliberate.cli import serve as _serve
from deliberate.cli import strategies as _strategies
from deliberate.cli.common import console_err
from deliberate.errors import DeliberateError, UsageError

app = typer.Typer(
    name="deliberate",
    help="Generate, critique, refine and search with any chat model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(_run.run_cmd)
app.command("runs")(_inspect.runs_cmd)
app.command("show")(_inspect.show_cmd)
app.command("models")(_models.models_cmd)
app.command("strategies")(_strategies.strategies_cmd)
app.add_typer(_models.sim_app, name="sim")
app.add_typer(_models.replay_app, name="replay")
app.add_typer(_eval.eval_app, name="eval")
app.command("export")(_export.export_cmd)
app.command("serve")(_serve.serve_cmd)
app.command("report")(_report.report_cmd)


def _typer_usage_error() -> type[click.ClickException]:
    """typer >= 0.26 vendors click: its usage errors are not click's classes."""
    try:
        mod = importlib.import_module("typer._click.exceptions")
    except ImportError:
        return click.ClickException
    cls = getattr(mod, "ClickException", click.ClickException)
    return cls if isinstance(cls, type) else click.ClickException


_USAGE_ERRORS = (click.ClickException, _typer_usage_error())


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected errors print one line; ``--debug`` shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rv = app(args=args, prog_name="deliberate", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except _USAGE_ERRORS as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        console_err.print("interrupted")
        sys.exit(130)
    except DeliberateError as exc:
        if debug:
            raise
        console_err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    if isinstance(rv, int) and rv:
        # click reports Ctrl-C as exit code 130 when not in standalone mode
        if rv == 130:
            console_err.print("interrupted; continue with: deliberate run --resume RUN")
        sys.exit(rv)


__all__ = ["app", "main"]
