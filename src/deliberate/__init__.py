"""deliberate: generate, critique, refine and search with any chat model.

The names below are the promised public API (a test holds ``__all__`` to them);
everything else is importable but may change.
"""

from deliberate.config import BudgetConfig, RetryConfig, RoleConfig, RunConfig
from deliberate.engine.context import TaskContext, TaskTree
from deliberate.engine.runner import Engine, RunResult, arun, run
from deliberate.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    DeliberateError,
    ModelError,
    StoreError,
    UsageError,
)
from deliberate.models.base import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Completion,
    Message,
    ModelProfile,
    Usage,
)
from deliberate.models.registry import build_model, parse_model_spec
from deliberate.models.scripted import FunctionModel
from deliberate.store import Store
from deliberate.strategies.base import (
    Strategy,
    StrategyConfig,
    StrategyResult,
    available_strategies,
)
from deliberate.tasks import Suite, Task, load_suite
from deliberate.tree import (
    AttemptRecord,
    JudgementRecord,
    ModelCallRecord,
    NodeRecord,
    RunRecord,
)

__version__ = "0.1.0"

__all__ = [
    "AttemptRecord",
    "BudgetConfig",
    "BudgetExceeded",
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "Completion",
    "ConfigError",
    "DataError",
    "DeliberateError",
    "Engine",
    "FunctionModel",
    "JudgementRecord",
    "Message",
    "ModelCallRecord",
    "ModelError",
    "ModelProfile",
    "NodeRecord",
    "RetryConfig",
    "RoleConfig",
    "RunConfig",
    "RunRecord",
    "RunResult",
    "Store",
    "StoreError",
    "Strategy",
    "StrategyConfig",
    "StrategyResult",
    "Suite",
    "Task",
    "TaskContext",
    "TaskTree",
    "Usage",
    "UsageError",
    "__version__",
    "arun",
    "available_strategies",
    "build_model",
    "load_suite",
    "parse_model_spec",
    "run",
]
