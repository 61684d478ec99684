"""The one HTTP server of edgebatch: an ASGI app on uvicorn inside a process that owns its own signals
(the controller's fleet page, the agent's /metrics). The socket is bound here, so a busy port is an
OSError for the caller to report, not uvicorn's exit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["HttpServer", "parse_address"]


class _QuietServer(uvicorn.Server):
    """uvicorn inside our process: the process owns SIGINT/SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6, ``:PORT`` for the default host) -> (host, port); ValueError else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} must be HOST:PORT (port 0-65535)")
    host = host.removeprefix("[").removesuffix("]") or default_host
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{text!r}: {host!r} is not a valid host name") from None
    return host, int(port)


class HttpServer:
    """An ASGI app served by uvicorn on a socket bound by ``start`` (port 0: any free one)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, name: str = "http") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self.graceful_shutdown_s = 5  # seconds: how long close() waits for requests in flight before cutting them
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port. Raises OSError (port taken, address not here, no permission)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        # Open streams (server-sent events) end on their own at shutdown; the grace bounds any other.
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=self.graceful_shutdown_s)
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None
