"""The ``deliberate serve`` app: the OpenAI-compatible API, the JSON API and the web view.

:func:`create_app` assembles the routers of :mod:`.openai_api`, :mod:`.api` and
:mod:`.pages`; its lifespan opens the store and builds one shared model stack per
upstream (backend → concurrency limit), which every request's run wraps in its own
retry, budget and journal. Everything the app holds lives on ``app.state``, so
several apps can share a process.

**Auth.** With client keys configured, every route but ``/healthz``, ``/login`` and
the OpenAPI schema needs one: ``Authorization: Bearer KEY`` (API clients) or the
``deliberate_key`` cookie, which ``GET /login?key=KEY`` sets for a browser. Client
keys are not upstream keys: those belong to the upstream's model string. Without
client keys the server refuses to listen beyond loopback (:meth:`ServeConfig.check_exposure`).

**Errors** are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:
401 (no or wrong key), 400 (malformed body, bad parameter, validation failures
FastAPI would report as 422), 404 (unknown model, strategy, upstream or route), 413
(body over ``limits.max_body_bytes``), 429 (over ``limits.max_concurrent_requests``),
502/504 (the upstream failed or timed out), 500 (anything else, logged).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from deliberate.models.base import ChatModel, ChatRequest, ModelWrapper, StreamEvent, stream_chat
from deliberate.models.middleware import ConcurrencyLimitModel
from deliberate.models.registry import build_model
from deliberate.server.config import ServeConfig
from deliberate.server.openai_api import ServerState
from deliberate.server.openai_api import router as openai_router
from deliberate.server.wire import ApiError
from deliberate.serving import BackgroundServer, bind, run_foreground, url_of, uvicorn_config
from deliberate.store import Store
from deliberate.strategies.base import available_strategies

__all__ = ["KEY_COOKIE", "BackgroundServer", "SharedUpstream", "create_app", "openapi_document",
           "serve"]

log = logging.getLogger(__name__)

KEY_COOKIE = "deliberate_key"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SharedUpstream(ModelWrapper):
    """An upstream's stack shared by every request: streams through, and is closed by the
    app's lifespan, not by the run that used it."""

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        async with aclosing(stream_chat(self.inner, request)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        return None


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the server's limit of "
                              f"{limit} bytes")


class BodyLimit:
    """Refuses bodies over ``limit`` bytes: by Content-Length before reading, and by
    counting what arrives for bodies sent without one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    err = ApiError(413, BodyTooLarge(self.limit).detail,
                                   code="request_too_large")
                    await err.response()(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('msg', '')}",
                        code="invalid_json")
    param = ".".join(loc) or None
    given = first.get("input")
    shown = f" (got {given!r})" if isinstance(given, str | int | float | bool) else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{param}: " if param else ""
    return ApiError(400, f"{where}{first.get('msg', 'invalid request')}{shown}{more}",
                    param=param, code="invalid_value")


def create_app(config: ServeConfig, *, store: Store | None = None,
               models: dict[str, ChatModel] | None = None) -> FastAPI:
    """The server for ``config``.

    ``store``: an open Store to use (the caller closes it); by default the app opens
    ``config.store`` in its lifespan. ``models``: backends by upstream name instead of
    building them from their model strings (tests; the caller closes them).
    """
    upstreams = config.effective_upstreams()
    keys = tuple(k.encode() for k in config.api_keys)
    given_models = dict(models or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        st = store if store is not None else await Store.aopen(config.store)
        built: list[ChatModel] = []
        try:
            if not own_store:
                await st.start()
            shared: dict[str, ChatModel] = {}
            for name, spec in upstreams.items():
                if spec in shared:
                    continue
                backend = given_models.get(name)
                if backend is None:
                    backend = await asyncio.to_thread(build_model, spec)
                    built.append(backend)
                shared[spec] = SharedUpstream(
                    ConcurrencyLimitModel(backend, config.upstream_concurrency))
            state = ServerState(config=config, store=st, models=shared, upstreams=upstreams,
                                strategies=available_strategies(),
                                base_run=config.base_run())
            app.state.deliberate = state
            app.state.store = st  # what the JSON API and the pages read
            try:
                yield
            finally:
                runs = list(state.runs)
                for run in runs:
                    run.cancel()
                await asyncio.gather(*runs, return_exceptions=True)
        finally:
            for backend in built:
                await backend.aclose()
            if own_store:
                await st.aclose()
            else:
                await st.flush()

    app = FastAPI(
        title="deliberate",
        summary="Test-time strategies behind an OpenAI-compatible API, and their trees.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads its code from a CDN; the schema is served instead
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(BodyLimit, limit=config.limits.max_body_bytes)

    bearer = HTTPBearer(auto_error=False, description="a client API key of the server")

    def valid(key: str | None) -> bool:
        if not key:
            return False
        given = key.encode()
        return any(hmac.compare_digest(given, k) for k in keys)

    async def require_key(
        request: Request,
        creds: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> None:
        if not keys:
            return
        key = creds.credentials if creds is not None else request.cookies.get(KEY_COOKIE)
        if valid(key):
            return
        raise ApiError(401, "Incorrect API key provided." if key else
                       "Missing API key: send 'Authorization: Bearer KEY'.",
                       code="invalid_api_key")

    guarded = [Depends(require_key)]
    app.include_router(openai_router, dependencies=guarded)
    _include_views(app, guarded)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict[str, Any]:
        state = getattr(request.app.state, "deliberate", None)
        return {"status": "ok", "requests_in_flight": state.in_flight if state else 0}

    @app.get("/login", include_in_schema=False)
    async def login(key: str, next: str = "/") -> Response:
        """Set the key cookie for a browser and go on to ``next`` (a local path)."""
        if keys and not valid(key):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict")
        return resp

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return ApiError(exc.status_code, str(exc.detail), code=code.get(exc.status_code),
                        headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return ApiError(500, "internal server error", type="server_error",
                        code="internal_error").response()

    return app


def _include_views(app: FastAPI, guarded: list[Any]) -> None:
    """The JSON API and the web pages (their own modules), behind the same keys."""
    from deliberate.server import api, pages

    app.include_router(api.router, dependencies=guarded)
    app.include_router(pages.router, dependencies=guarded)


def openapi_document() -> str:
    """The app's OpenAPI schema as docs/openapi.json holds it (a test keeps it current)."""
    import json

    schema = create_app(ServeConfig()).openapi()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deliberate")
    except PackageNotFoundError:
        return "0"


# ------------------------------------------------------------------ running it


def serve(config: ServeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the server in the foreground until interrupted (the CLI's ``serve``)."""
    config.check_exposure()
    app = create_app(config)
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    if on_ready is not None:
        on_ready(url_of(config.host, port))  # early clients wait in the backlog
    run_foreground(uvicorn_config(app, config.host, port), sock)
