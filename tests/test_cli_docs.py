"""docs/cli.md is the CLI's own help: regenerate it when a command changes."""

from __future__ import annotations

from deliberate.cli.helpdoc import render
from tests.conftest import REPO


def test_cli_reference_is_current() -> None:
    current = (REPO / "docs" / "cli.md").read_text()
    assert render() == current, (
        "docs/cli.md is stale: run python -m deliberate.cli.helpdoc > docs/cli.md")
