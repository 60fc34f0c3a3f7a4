"""Entry points of installed plugins, read once per process.

``importlib.metadata.entry_points`` reads the metadata of every installed
distribution, a few hundred files, on each call; the engine asks for strategies and
model backends on every run (and the server on every request). The installed set does
not change while a process runs, so the answer is kept.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points


@functools.cache
def installed(group: str) -> tuple[EntryPoint, ...]:
    """The entry points registered under ``group`` by installed packages."""
    return tuple(entry_points(group=group))
