"""The one configuration object of a run.

The same :class:`RunConfig` comes from a YAML file, from CLI flags (which override
the file), from the Python API and, later, from a server request. It is frozen:
run state lives in the tree, never in the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deliberate.errors import ConfigError
from deliberate.models.budget import Limits, Price, PriceTable
from deliberate.models.middleware import RetryPolicy


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FrozenConfig(_Frozen):
    """A frozen settings object that loads from a mapping or a YAML file with one-line
    errors naming the file and field (run, sweep and serve configs alike)."""

    config_source: ClassVar[str] = "config"

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str | None = None) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, source or cls.config_source)
                              ) from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.from_mapping(load_yaml(path), source=str(path))


class RoleConfig(_Frozen):
    """Model and sampling settings of one role; ``model`` None means the run's model."""

    model: str | None = None
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1)


class BudgetConfig(_Frozen):
    """Hard limits; None means unlimited."""

    max_tokens: int | None = Field(None, ge=1)
    max_calls: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)
    max_wall_s: float | None = Field(None, gt=0)

    def limits(self) -> Limits:
        return Limits(self.max_tokens, self.max_calls, self.max_cost, self.max_wall_s)


class RetryConfig(_Frozen):
    max_attempts: int = Field(5, ge=1, le=20)
    base_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(20.0, ge=0)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.base_delay_s, self.max_delay_s)


class PriceConfig(_Frozen):
    """US dollars per million tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class RunConfig(FrozenConfig):
    """Everything that determines a run."""

    suite: str = "arithmetic"
    limit: int | None = Field(None, ge=1, description="run only the first N tasks")
    strategy: str = "self_consistency"
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(None, description="model string; None: sim unless an endpoint is set")
    generator: RoleConfig = RoleConfig(temperature=0.8, max_tokens=1024)
    judge: RoleConfig = RoleConfig(temperature=0.0, max_tokens=512)
    critic: RoleConfig = RoleConfig(temperature=0.0, max_tokens=1024)
    refiner: RoleConfig = RoleConfig(temperature=0.7, max_tokens=1024)
    roles: dict[str, RoleConfig] = Field(
        default_factory=dict,
        description="settings of further roles by name (auditor, debater, step_critic, …)",
    )
    prompts_dir: str | None = Field(
        None, description="directory of Jinja2 templates that replace built-in ones by name"
    )
    verifier: str = Field(
        "auto", description="grading verifier spec (docs/verifiers.md); auto picks by task kind"
    )
    grade_candidates: bool = Field(
        True, description="also grade every candidate (sample and oracle accuracy); "
        "turn off where grading is costly, e.g. running many programs' tests"
    )
    task_budget: BudgetConfig = BudgetConfig()
    run_budget: BudgetConfig = BudgetConfig()
    seed: int = 0
    store: str | None = Field(None, description="database URL or path; None: the default SQLite")
    cache: bool = True
    cache_path: str | None = None
    concurrency: int = Field(8, ge=1, le=4096, description="tasks in flight at once")
    max_inflight_calls: int = Field(64, ge=1, le=100_000)
    retry: RetryConfig = RetryConfig()
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    name: str | None = None

    @field_validator("strategy")
    @classmethod
    def _strategy_name(cls, v: str) -> str:
        return v.strip().replace("-", "_")

    def role(self, name: str) -> RoleConfig:
        """Settings of a role: its own field, else ``roles[name]``, else the judge's for
        judging roles and the generator's for the rest."""
        if name in ("generator", "judge", "critic", "refiner"):
            explicit: RoleConfig = getattr(self, name)
            return explicit
        if name in self.roles:
            return self.roles[name]
        judging = ("judge", "critic", "verifier", "reviewer", "ranker", "value")
        return self.judge if any(w in name for w in judging) else self.generator

    def price_table(self) -> PriceTable:
        return PriceTable(
            tuple((k, Price(v.input, v.output)) for k, v in self.prices.items())
        )

    def merged(self, overrides: dict[str, Any]) -> RunConfig:
        """This config with dotted-key overrides applied (``judge.model=...``)."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return RunConfig.from_mapping(data, source="options")


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p}{where} is not valid YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings")
    return data


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming the first bad field, what is wrong and what was given."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(root)"
    given = err.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {err['msg']}{shown}{more}"
