"""Running an ASGI app on a socket: in the foreground for a CLI, or in a background
thread for tests, benchmarks and embedding programs.

Shared by the OpenAI-compatible server (``deliberate serve``) and the sim's server
(``deliberate sim serve``), so both bind, start and stop alike. It imports nothing of
the package: the sim sits below everything that serves.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import uvicorn

__all__ = ["BackgroundServer", "bind", "run_foreground", "url_of", "uvicorn_config"]

Lifespan = Literal["on", "off"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), inheritable by workers.

    It listens at once, so a client told the address early waits in the backlog
    until the app has started instead of being refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol must be named: asyncio turns Nagle off (TCP_NODELAY) on accepted
    # sockets only when the listener says IPPROTO_TCP, and with Nagle on every
    # kept-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, host: str, port: int, *, lifespan: Lifespan = "on",
                   graceful_s: int = 2) -> uvicorn.Config:
    # log_config/log_level None: the embedding program owns logging.
    return uvicorn.Config(app, host=host, port=port, log_config=None, log_level=None,
                          access_log=False, lifespan=lifespan, ws="none",
                          timeout_graceful_shutdown=graceful_s, backlog=4096)


def url_of(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run_foreground(config: uvicorn.Config, sock: socket.socket) -> None:
    """Serve on ``sock`` until interrupted, then close it."""
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """An app on a port of ``host`` in a daemon thread.

    ``with BackgroundServer(app) as srv: AsyncOpenAI(base_url=srv.base_url, api_key="x")``.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 lifespan: Lifespan = "on", graceful_s: int = 2,
                 name: str = "deliberate-serve") -> None:
        self.app = app
        self.host = host
        self._port = port
        self._lifespan: Lifespan = lifespan
        self._graceful_s = graceful_s
        self._name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._bound: int | None = None  # the port once started; kept after stop

    @property
    def port(self) -> int:
        if self._bound is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._bound

    @property
    def url(self) -> str:
        """The root URL, ``http://127.0.0.1:PORT``."""
        return url_of(self.host, self.port)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``…/v1``)."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        if self._thread is not None:
            return self
        sock = bind(self.host, self._port)
        self._port = self._bound = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(self.app, self.host, self._bound,
                                               lifespan=self._lifespan,
                                               graceful_s=self._graceful_s))
        self._server, self._sock = server, sock
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"{self._name}-{self._bound}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{type(self).__name__} failed to start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout / 2)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout / 2)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
