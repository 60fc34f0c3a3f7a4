"""Tasks and suites: what a strategy is asked to solve, with the ground truth to judge it.

Suites come from one spec string (:func:`load_suite`): a built-in name, a benchmark
loader with a path, or any JSONL/JSON/Parquet file read through a :class:`FieldMapping`.
This layer imports nothing from the rest of the engine at import time.
"""

from deliberate.tasks.loaders import (
    FieldMapping,
    load_gsm8k,
    load_humaneval,
    load_json,
    load_jsonl,
    load_mbpp_plus,
    load_parquet,
)
from deliberate.tasks.registry import builtin_suites, load_suite
from deliberate.tasks.task import Suite, Task, TaskKind

__all__ = [
    "FieldMapping",
    "Suite",
    "Task",
    "TaskKind",
    "builtin_suites",
    "load_gsm8k",
    "load_humaneval",
    "load_json",
    "load_jsonl",
    "load_mbpp_plus",
    "load_parquet",
    "load_suite",
]
