"""Model strings and the backends they name.

Grammar (documented in the README)::

    SCHEME[:NAME][@BASE_URL][?key=value&key=value]

    sim                                  simulated model on the run's suite
    sim:gsm8k:../shared/data/math/gsm8k-train.jsonl.gz?skill=0.7
    openai:gpt-4o-mini                   OpenAI, key from OPENAI_API_KEY
    openai:Qwen2.5-7B@http://localhost:8000/v1?timeout=30&supports_n=false
    litellm:anthropic/claude-3-5-haiku
    replay:samples.jsonl?seed=3&order=shuffled

Backends register through a table of factories; third-party backends add theirs
with the ``deliberate.models`` entry-point group (a callable ``register(add)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from deliberate.errors import ConfigError, UnknownNameError
from deliberate.models.base import ChatModel, ModelProfile
from deliberate.plugins import installed
from deliberate.tasks.task import Suite


@dataclass(frozen=True, slots=True)
class ModelSpec:
    scheme: str
    name: str = ""
    base_url: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        s = self.scheme
        if self.name:
            s += f":{self.name}"
        if self.base_url:
            s += f"@{self.base_url}"
        if self.params:
            s += "?" + "&".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return s


def parse_model_spec(text: str) -> ModelSpec:
    """Parse a model string; raises ConfigError with the grammar on malformed input."""
    raw = text.strip()
    if not raw:
        raise ConfigError("empty model string; try 'sim' or 'openai:MODEL@BASE_URL'")
    scheme, _, rest = raw.partition(":")
    if scheme.startswith("http"):
        raise ConfigError(
            f"model string {raw!r} looks like a URL; write 'openai:MODEL@{raw}' instead"
        )
    params: dict[str, str] = {}
    query = ""
    if "?" in rest:
        rest, _, query = rest.rpartition("?")
    elif "?" in scheme:
        scheme, _, query = scheme.partition("?")
    if query:
        try:
            params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
        except ValueError as exc:
            raise ConfigError(f"model string {raw!r}: bad parameters {query!r}") from exc
    base_url = None
    if "@" in rest:
        rest, _, base_url = rest.partition("@")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"model string {raw!r}: base URL must start with http:// or https://")
    return ModelSpec(scheme=scheme.lower(), name=rest, base_url=base_url, params=params)


Factory = Callable[[ModelSpec, "Suite | None"], ChatModel]


def _bool(v: str, what: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{what} must be true or false, got {v!r}")


def _profile(spec: ModelSpec, default: ModelProfile) -> ModelProfile:
    p = spec.params
    try:
        return ModelProfile(
            supports_n=_bool(p["supports_n"], "supports_n") if "supports_n" in p
            else default.supports_n,
            max_n=int(p.get("max_n", default.max_n)),
            supports_seed=_bool(p["supports_seed"], "supports_seed") if "supports_seed" in p
            else default.supports_seed,
            supports_json_schema=_bool(p["json_schema"], "json_schema") if "json_schema" in p
            else default.supports_json_schema,
        )
    except ValueError as exc:
        raise ConfigError(f"model {spec}: {exc}") from exc


def _build_sim(spec: ModelSpec, suite: Suite | None) -> ChatModel:
    from pydantic import ValidationError

    from deliberate.models.sim import SimModel, SimParams
    from deliberate.tasks.registry import load_suite

    if spec.name:
        suite = load_suite(spec.name)
    if suite is None:
        raise ConfigError("the sim model needs tasks with known answers: write 'sim:SUITE'")
    try:
        params = SimParams.model_validate(spec.params)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"model {spec}: parameter {loc}: {first['msg']}") from exc
    return SimModel(suite, params)


def _build_openai(spec: ModelSpec, suite: Suite | None) -> ChatModel:
    from deliberate.models.openai_backend import OpenAIChatModel

    name = spec.name or os.environ.get("DELIBERATE_MODEL", "")
    if not name:
        raise ConfigError("openai model needs a name: 'openai:MODEL[@BASE_URL]'")
    try:
        timeout = float(spec.params.get("timeout", "60"))
    except ValueError as exc:
        raise ConfigError(f"model {spec}: timeout must be a number of seconds") from exc
    return OpenAIChatModel(
        model=name,
        base_url=spec.base_url,
        api_key=spec.params.get("api_key_env") and os.environ.get(spec.params["api_key_env"]),
        timeout_s=timeout,
        profile=_profile(spec, ModelProfile()),
    )


def _build_litellm(spec: ModelSpec, suite: Suite | None) -> ChatModel:
    from deliberate.models.litellm_backend import LiteLLMChatModel

    if not spec.name:
        raise ConfigError("litellm model needs a name: 'litellm:PROVIDER/MODEL'")
    return LiteLLMChatModel(
        model=spec.name,
        base_url=spec.base_url,
        profile=_profile(spec, ModelProfile(supports_n=False)),
    )


def _build_replay(spec: ModelSpec, suite: Suite | None) -> ChatModel:
    from deliberate.models.replay import ReplayModel

    if not spec.name:
        raise ConfigError("replay model needs a file: 'replay:PATH.jsonl'")
    try:
        seed = int(spec.params.get("seed", "0"))
    except ValueError as exc:
        raise ConfigError(f"model {spec}: seed must be an integer") from exc
    order = spec.params.get("order", "shuffled")
    if order == "shuffled":
        return ReplayModel.from_path(spec.name, seed=seed, order="shuffled")
    if order == "recorded":
        return ReplayModel.from_path(spec.name, seed=seed, order="recorded")
    raise ConfigError(f"model {spec}: order must be 'shuffled' or 'recorded'")


BUILTIN_BACKENDS: dict[str, tuple[Factory, str]] = {
    "sim": (_build_sim, "simulated model of configurable skill, for offline demos and tests"),
    "openai": (_build_openai, "any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama, …)"),
    "litellm": (_build_litellm, "providers that are not OpenAI-compatible, via LiteLLM (extra)"),
    "replay": (_build_replay, "recorded completions from a JSONL file"),
}


def backends() -> dict[str, tuple[Factory, str]]:
    """Built-in backends plus those registered by installed plugins."""
    table = dict(BUILTIN_BACKENDS)

    def add(scheme: str, factory: Factory, description: str = "") -> None:
        table[scheme] = (factory, description)

    for ep in installed("deliberate.models"):
        ep.load()(add)
    return table


def build_model(spec: str | ModelSpec, suite: Suite | None = None) -> ChatModel:
    """The backend named by a model string (without middleware)."""
    parsed = parse_model_spec(spec) if isinstance(spec, str) else spec
    table = backends()
    if parsed.scheme not in table:
        raise UnknownNameError(
            f"unknown model backend {parsed.scheme!r}; known: {', '.join(sorted(table))}"
        )
    return table[parsed.scheme][0](parsed, suite)


def default_model_string() -> str:
    """``sim`` unless an endpoint is configured in the environment."""
    explicit = os.environ.get("DELIBERATE_MODEL")
    base = os.environ.get("DELIBERATE_BASE_URL")
    if explicit and ":" in explicit.split("@")[0]:
        return explicit
    if base:
        if not explicit:
            raise ConfigError(
                "DELIBERATE_BASE_URL is set but DELIBERATE_MODEL is not: "
                "set DELIBERATE_MODEL to the model name the endpoint serves"
            )
        return f"openai:{explicit}@{base}"
    if explicit:
        return f"openai:{explicit}"
    return "sim"
