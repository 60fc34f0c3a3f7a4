"""A user's own check as a verifier: a Python callable found by dotted path
(``python:package.module:function``), by file path (``python:path/to/file.py:function``,
so a script beside the data needs no ``PYTHONPATH``) or registered under the
entry-point group ``deliberate.verifiers``.

The callable takes ``(task, text, answer)``, may be sync or async, and returns a
``bool``, a score (``float`` in [0, 1]; it passes at ``threshold``), a
:class:`VerifierResult`, or ``None`` (cannot decide). An entry point or dotted
path may also name a class with an async ``verify`` method; it is built with no
arguments. Whatever goes wrong *inside* the callable becomes a failed result
carrying the error text — a user's bug fails the candidate, never the run.
Finding the callable is checked up front: a bad path is a one-line usage error.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from deliberate.errors import ConfigError, UnknownNameError
from deliberate.plugins import installed
from deliberate.tasks.task import Task
from deliberate.verifiers.base import Verifier, VerifierResult

ENTRY_POINT_GROUP = "deliberate.verifiers"


class CallableVerifier:
    """Wraps ``fn(task, text, answer)`` into the :class:`Verifier` protocol.

    Sync callables run in a worker thread so a slow check does not stall the
    event loop.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str, threshold: float = 1.0) -> None:
        if not callable(fn):
            raise ConfigError(f"verifier {name}: {fn!r} is not callable")
        self.fn = fn
        self.name = name
        self.threshold = threshold

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        try:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(task, text, answer)
            else:
                value = await asyncio.to_thread(self.fn, task, text, answer)
                if inspect.isawaitable(value):
                    value = await value
        except Exception as exc:  # the user's code: its failure fails the candidate only
            return VerifierResult(False, 0.0, f"verifier {self.name} raised "
                                              f"{type(exc).__name__}: {exc}")
        return self._convert(value)

    def _convert(self, value: Any) -> VerifierResult:
        if isinstance(value, VerifierResult):
            return value
        if value is None:
            return VerifierResult(None, None, f"verifier {self.name} could not decide")
        if isinstance(value, bool):
            return VerifierResult(value, 1.0 if value else 0.0,
                                  f"verifier {self.name}: {'pass' if value else 'fail'}")
        if isinstance(value, int | float):
            score = float(value)
            if not math.isfinite(score) or not 0.0 <= score <= 1.0:
                return VerifierResult(False, 0.0, f"verifier {self.name} returned {value!r}, "
                                                  "outside the score range [0, 1]")
            ok = score >= self.threshold
            return VerifierResult(ok, score, f"verifier {self.name}: score {score:g}")
        return VerifierResult(False, 0.0, f"verifier {self.name} returned "
                                          f"{type(value).__name__}; expected bool, float, "
                                          "VerifierResult or None")


def as_verifier(obj: Any, *, name: str) -> Verifier:
    """A verifier from what a path or entry point names: a verifier object, a class
    with ``verify`` (built with no arguments), or a plain callable."""
    if inspect.isclass(obj):
        if not callable(getattr(obj, "verify", None)):
            raise ConfigError(f"verifier {name}: class {obj.__name__} has no verify method")
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(f"verifier {name}: could not build {obj.__name__}(): "
                              f"{exc}") from exc
    if callable(getattr(obj, "verify", None)):
        if not isinstance(getattr(obj, "name", None), str):
            obj.name = name
        verifier: Verifier = obj
        return verifier
    return CallableVerifier(obj, name=name)


def load_dotted(path: str) -> Any:
    """The object at ``package.module:attribute`` or ``path/to/file.py:attribute``
    (the attribute may be dotted), for a ``python:`` verifier spec."""
    return load_object(path, label=f"verifier python:{path}",
                       form="python:package.module:function or python:path/to/file.py:function")


def load_object(spec: str, *, label: str, form: str) -> Any:
    """The object a ``MODULE:ATTRIBUTE`` spec names, MODULE being a dotted module name
    or a path to a ``.py`` file (relative to the current directory).

    ``label`` starts every error message and ``form`` is the expected shape shown
    when the spec is malformed. A missing module, file or attribute is an
    :class:`UnknownNameError`; a module that fails to import is a :class:`ConfigError`.
    """
    source, sep, attr = spec.rpartition(":")
    if not sep or not source or not attr:
        raise ConfigError(f"{label}: expected {form}")
    if _is_file(source):
        module = _import_file(source, label)
        where = source
    else:
        if ":" in source:
            raise ConfigError(f"{label}: expected {form}")
        try:
            module = importlib.import_module(source)
        except ModuleNotFoundError as exc:
            raise UnknownNameError(f"{label}: no module {exc.name!r}") from exc
        except Exception as exc:
            raise ConfigError(f"{label}: importing {source} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        where = source
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownNameError(f"{label}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def _import_file(source: str, label: str) -> ModuleType:
    """Import a ``.py`` file as a module of its own.

    The module is registered in ``sys.modules`` under a name derived from the
    file's resolved path (so its dataclasses and pickling work, and loading the
    same file twice gives the same module); a changed file is not reloaded.
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise UnknownNameError(f"{label}: no file {source!r} (paths are relative to the "
                               f"current directory, {Path.cwd()})")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"_deliberate_user_{_identifier(resolved.stem)}_{digest}"
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{label}: {source} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{label}: importing {source} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    return module


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def python_verifier(path: str) -> Verifier:
    """``python:package.module:function`` or ``python:path/to/file.py:function`` as a
    verifier."""
    return as_verifier(load_dotted(path), name=f"python:{path}")


def entry_point_names() -> list[str]:
    """Names registered under the ``deliberate.verifiers`` entry-point group."""
    return sorted({ep.name for ep in installed(ENTRY_POINT_GROUP)})


def entry_point_verifier(name: str) -> Verifier | None:
    """The verifier registered as ``name``, or None when no package registers it."""
    for ep in installed(ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                target = ep.load()
            except Exception as exc:
                raise ConfigError(f"verifier {name}: loading entry point {ep.value} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            return as_verifier(target, name=name)
    return None
