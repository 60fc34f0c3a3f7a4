"""Project checks that run with the tests: lint, types, the public API."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import deliberate
from tests.conftest import REPO

PUBLIC = {
    "AttemptRecord", "BudgetConfig", "BudgetExceeded", "ChatModel", "ChatRequest",
    "ChatResponse", "Completion", "ConfigError", "DataError", "DeliberateError", "Engine",
    "FunctionModel", "JudgementRecord", "Message", "ModelCallRecord", "ModelError",
    "ModelProfile", "NodeRecord", "RetryConfig", "RoleConfig", "RunConfig", "RunRecord",
    "RunResult", "Store", "StoreError", "Strategy", "StrategyConfig", "StrategyResult", "Suite",
    "Task", "TaskContext", "TaskTree", "Usage", "UsageError", "__version__", "arun",
    "build_model", "load_suite", "parse_model_spec", "run", "available_strategies",
}


def test_public_api_is_exactly_the_promised_names() -> None:
    assert set(deliberate.__all__) == PUBLIC
    for name in deliberate.__all__:
        assert hasattr(deliberate, name), name


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return [sys.executable, "-m", name]


def test_ruff_is_clean() -> None:
    r = subprocess.run([*_tool("ruff"), "check", "src", "tests"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean() -> None:
    r = subprocess.run([*_tool("mypy")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_layers_point_one_way() -> None:
    """models, tasks, store, tree, serving and export import nothing from the layers above."""
    lower = {"models": ["tasks"], "tasks": [], "store": ["tree"], "tree": [], "parsing": [],
             "verifiers": ["tasks"], "export": ["export"], "serving": []}
    higher = ("strategies", "engine", "cli", "roles", "evals", "server", "export")
    for layer, allowed in lower.items():
        path = REPO / "src" / "deliberate" / layer
        files = list(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for f in files:
            text = f.read_text()
            for h in higher:
                if h in allowed:
                    continue
                assert f"deliberate.{h}" not in text, f"{f} imports deliberate.{h}"
