"""The OpenAI wire format as the server speaks it: request and response models, and
the error shape ``{"error": {"message", "type", "param", "code"}}``.

The request models accept fields they do not name (OpenAI adds fields often, and
clients send them); :mod:`.openai_api` decides which it honours, ignores or refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from deliberate.config import BudgetConfig
from deliberate.tasks.task import TaskKind

__all__ = [
    "ERRORS",
    "ApiError",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "Choice",
    "DeliberateOptions",
    "ModelInfo",
    "ModelList",
    "ReplyMessage",
    "RunInfo",
    "UsageOut",
]


class ApiError(Exception):
    """An error for the client, in OpenAI's shape (the app's handler writes it)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# ------------------------------------------------------------------ the request


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str = "text"
    text: str | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            kinds = {p.type for p in self.content} - {"text"}
            if kinds:
                raise ApiError(400, f"only text content is supported, not {sorted(kinds)}",
                               param="messages", code="unsupported_content")
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(_Open):
    include_usage: bool = False


class DeliberateOptions(BaseModel):
    """The ``deliberate`` extension object of a request (all optional)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str | None = Field(None, description="strategy name (overrides the model name's)")
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters")
    upstream: str | None = Field(None, description="upstream name (overrides the model name's)")
    budget: BudgetConfig | None = Field(None, description="this request's budget")
    reference: str | None = Field(None, description="a reference answer: the run is graded")
    kind: TaskKind | None = Field(None, description="task kind: text, math, code, choice, …")
    progress: bool | None = Field(None, description="stream progress events")


UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "prediction")


class ChatCompletionRequest(_Open):
    """The OpenAI chat-completions request, as far as the server honours it.

    Other OpenAI fields are accepted and ignored (penalties, ``user``, ``metadata``);
    tools and logprobs are refused with 400.
    """

    model: str = Field(min_length=1, max_length=512)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    deliberate: DeliberateOptions | None = None


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ReplyMessage
    finish_reason: str | None
    logprobs: None = None


class RunInfo(BaseModel):
    """The ``deliberate`` object of a response: the run behind the answer."""

    model_config = ConfigDict(extra="allow")

    event: str = "done"
    run_id: str
    task_id: str
    url: str = Field(description="the run in the web view")
    tree_url: str = Field(description="the task's tree in the web view")
    strategy: str
    upstream: str
    status: str | None = None
    calls: int | None = None
    cost: float | None = None
    budget_limited: bool | None = None
    limited_by: str | None = None
    note: str | None = None
    node_id: str | None = None
    answer: str | None = None
    correct: bool | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: UsageOut
    deliberate: RunInfo


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "deliberate"
    deliberate: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed request or unsupported parameter"},
    401: {"model": ErrorOut, "description": "missing or wrong API key"},
    404: {"model": ErrorOut, "description": "unknown model, strategy or upstream"},
    413: {"model": ErrorOut, "description": "request body too large"},
    429: {"model": ErrorOut, "description": "too many requests in flight"},
    502: {"model": ErrorOut, "description": "the upstream model failed"},
    504: {"model": ErrorOut, "description": "the upstream model timed out"},
}
