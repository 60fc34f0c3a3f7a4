"""deliberate.serving: the sockets and background threads both our servers run on."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from deliberate.serving import BackgroundServer, bind, url_of


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def test_accepted_connections_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY on an accepted socket only when the listener names
    IPPROTO_TCP; with Nagle on, each kept-alive response waits for a delayed ACK."""
    sock = bind("127.0.0.1", 0)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            s = transport.get_extra_info("socket")
            seen.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await seen != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_a_bound_socket_already_listens() -> None:
    """A client told the address before the app starts waits, it is not refused."""
    sock = bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            pass
    finally:
        sock.close()


def test_a_taken_port_is_refused() -> None:
    held = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="in use"):
            bind("127.0.0.1", held.getsockname()[1])
    finally:
        held.close()


def test_background_server_serves_stops_and_restarts_on_its_port() -> None:
    srv = BackgroundServer(_app())
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.url
    with srv:
        port = srv.port
        assert srv.base_url == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{srv.url}/ping").json() == {"pong": "yes"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/ping")
    with srv:  # the same port again, so URLs handed out stay good
        assert srv.port == port
        assert httpx.get(f"{srv.url}/ping").status_code == 200


def test_urls_bracket_ipv6_hosts() -> None:
    assert url_of("::1", 8000) == "http://[::1]:8000"
    assert url_of("127.0.0.1", 8000) == "http://127.0.0.1:8000"
