"""Strategies: the algorithms, each a plain object with a config, growing a tree."""

from deliberate.strategies.base import (
    Strategy,
    StrategyConfig,
    StrategyResult,
    available_strategies,
    build_strategy,
)

__all__ = ["Strategy", "StrategyConfig", "StrategyResult", "available_strategies", "build_strategy"]
