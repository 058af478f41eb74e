"""The worker's HTTP port: ``/healthz``, ``/readyz``, ``/metrics`` and ``/status``.

A few read-only GET routes do not justify a web framework dependency, so this is a minimal
HTTP/1.1 responder on asyncio streams (one request per connection), bound to loopback. With a
token, every route but the open ones (the probes an orchestrator calls) needs
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection

import orjson
import psutil
from pydantic import SecretStr

log = logging.getLogger("streamflow.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def json_response(status: int, body: object) -> tuple[int, str, bytes]:
    return status, "application/json", orjson.dumps(body, option=orjson.OPT_INDENT_2)


class HttpServer:
    def __init__(self, routes: dict[str, Handler], host: str, port: int,
                 token: SecretStr | None = None, open_paths: Collection[str] = ()) -> None:
        self.routes, self.host, self.port = routes, host, port
        self.token, self.open_paths = token, frozenset(open_paths)
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Bind and return the port (useful with port 0, which picks a free one)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line, *header_lines = request.decode("latin-1").split("\r\n")
            method, _, rest = line.partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            handler = self.routes.get(path)
            extra = ""
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif not self._authorized(path, header_lines):
                status, ctype, body = 401, "text/plain", (
                    f"{path} needs Authorization: Bearer <token> (STREAMFLOW_HTTP_TOKEN)\n"
                    .encode())
                extra = 'WWW-Authenticate: Bearer realm="streamflow"\r\n'
            elif handler is None:
                routes = ", ".join(sorted(self.routes))
                status, ctype, body = 404, "text/plain", f"no route {path}; try {routes}\n".encode()
            else:
                try:
                    status, ctype, body = await handler()
                except Exception as e:  # a broken probe must not take the worker down
                    log.exception("HTTP %s failed", path)
                    status, ctype, body = 500, "text/plain", f"{type(e).__name__}: {e}\n".encode()
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
            writer.write(head.encode() + (body if method == "GET" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _authorized(self, path: str, header_lines: list[str]) -> bool:
        if self.token is None or path in self.open_paths:
            return True
        want = f"Bearer {self.token.get_secret_value()}".encode()
        for h in header_lines:
            name, _, value = h.partition(":")
            if name.strip().lower() == "authorization":
                return hmac.compare_digest(value.strip().encode("latin-1"), want)
        return False


def port_holder(port: int) -> psutil.Process | None:
    """The process listening on (or bound to) TCP ``port``, if the OS lets us see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    candidates = [c for c in conns if c.laddr and c.laddr.port == port and c.pid]
    candidates.sort(key=lambda c: c.status != psutil.CONN_LISTEN)
    for conn in candidates:
        if conn.status not in (psutil.CONN_LISTEN, psutil.CONN_NONE):
            continue
        with contextlib.suppress(psutil.Error):
            assert conn.pid is not None
            return psutil.Process(conn.pid)
    return None


def describe_process(proc: psutil.Process) -> str:
    """``pid 123 (java: java -cp … kafka.Kafka …)``: enough to recognise and kill it."""
    try:
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return f"pid {proc.pid}"
    if len(cmdline) > 200:
        cmdline = cmdline[:197] + "..."
    return f"pid {proc.pid} ({name}: {cmdline})" if cmdline else f"pid {proc.pid} ({name})"
