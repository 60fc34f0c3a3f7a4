"""Prompt templates: Jinja2 files shipped with the package, overridable per run.

A run may name a directory whose files replace the built-in ones of the same name
(``generator_system.j2``, ``judge_user.j2``, …); everything else falls back to the
package's templates.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from deliberate.errors import ConfigError


class Prompts:
    def __init__(self, override_dir: str | Path | None = None) -> None:
        if override_dir is None:
            self.env = _builtin_environment()
            return
        p = Path(override_dir)
        if not p.is_dir():
            raise ConfigError(f"prompt template directory {p} does not exist")
        self.env = _environment(jinja2.FileSystemLoader(str(p)), _package_loader())

    def render(self, name: str, **context: Any) -> str:
        try:
            return self.env.get_template(name).render(**context).strip()
        except jinja2.TemplateNotFound as exc:
            raise ConfigError(f"prompt template {name!r} not found") from exc
        except jinja2.TemplateError as exc:
            raise ConfigError(f"prompt template {name!r}: {exc}") from exc


def _package_loader() -> jinja2.BaseLoader:
    return jinja2.PackageLoader("deliberate.roles", "templates")


def _environment(*loaders: jinja2.BaseLoader) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(list(loaders)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
        # a run's templates do not change under it: without this every render
        # stats the template's file to see whether to reload it
        auto_reload=False,
    )


@functools.cache
def _builtin_environment() -> jinja2.Environment:
    """One environment for the package's own templates, shared by every run, so each
    template is compiled once per process rather than once per run. Runs with their
    own template directory get their own environment (its files may change between
    runs)."""
    return _environment(_package_loader())
