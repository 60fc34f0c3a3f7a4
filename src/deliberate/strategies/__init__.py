"""Strategies: the algorithms, each a plain object with a config, growing a tree."""

from deliberate.strategies.base import (
    Strategy,
    StrategyConfig,
    StrategyResult,
    build_strategy,
    strategies,
)

__all__ = ["Strategy", "StrategyConfig", "StrategyResult", "build_strategy", "strategies"]
