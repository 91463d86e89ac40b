"""The HTTP connection: uvicorn's httptools protocol with the limits uvicorn lacks.

uvicorn bounds neither the request head on its httptools path (httptools joins a header's
pieces by concatenation, so a 48 MB header costs quadratic time on the event loop) nor the
time a request may take to arrive (only h11 has ``h11_max_incomplete_event_size``, and
neither has a read timeout). ``HardenedHttpToolsProtocol`` adds, per connection:

- a head limit (``max_header_bytes``): 431 and close once the request line and headers pass it
  (checked as the head arrives, and on the whole head once parsed);
- a read timeout (``read_timeout``): a request must arrive whole, body included, within that
  long of its first byte, else 408 and close (slowloris);
- an idle timeout from the moment the connection opens (uvicorn starts it only after a first
  answer), so a connection that never sends a request is closed too;
- a connection cap (``max_connections``): the requests of a connection opened beyond it answer
  503 with ``{"error"}`` and Retry-After, and the connection is closed.

uvicorn's own plain-text 400 for a request that is not HTTP answers ``{"error"}`` too. It
hooks the protocol's parser callbacks (``on_message_begin``,
``on_headers_complete``, ``on_message_complete``) and uvicorn's keep-alive timer; the
tests in tests/test_server_hardening.py pin that behaviour to the uvicorn version installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from digitnet.serving.asgi import log as request_log
from digitnet.serving.asgi import send_bytes
from digitnet.serving.limits import ServerLimits
from digitnet.serving.protocol import dumps_json


class HardenedConfig(Config):
    """uvicorn's Config carrying digitnet's ``ServerLimits`` to the protocol (picklable, so
    uvicorn's worker processes get it too)."""

    def __init__(self, app: Any, limits: ServerLimits, **options: Any) -> None:
        super().__init__(
            app,
            http=HardenedHttpToolsProtocol,
            timeout_keep_alive=max(1, round(limits.keep_alive_timeout)),
            **options,
        )
        self.limits = limits


def _raw_response(status: int, reason: bytes, message: str) -> bytes:
    body = dumps_json({"error": message})
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    ) + body


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "limits", None) or ServerLimits()
        self.limits: ServerLimits = limits
        # Seconds as a float: uvicorn's own keep-alive setting is whole seconds.
        self.timeout_keep_alive = limits.keep_alive_timeout  # type: ignore[assignment]
        self._head_bytes = 0
        self._reading_head = True
        self._read_timer: asyncio.TimerHandle | None = None
        # Set once this connection is answered and closing: the parser may still be inside
        # the data it was fed, and its callbacks must then do nothing.
        self._discarding = False

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = _too_many_connections
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._start_read_timer()  # bytes before a request (stray CRLFs) count too
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.limits.max_header_bytes:
            self._head_too_large()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to bytes that are not HTTP (it has logged a warning already).
        self._refuse(400, b"Bad Request", "the request is not valid HTTP/1.1")

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._start_read_timer()  # a pipelined request starts without data_received

    def on_headers_complete(self) -> None:
        if self._discarding:
            return
        self._reading_head = False
        # A head that arrived in one piece is measured here (the separators counted as 4).
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._head_too_large()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._discarding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._discarding:
            return
        super().on_message_complete()
        self._stop_read_timer()
        self._reading_head = True
        self._head_bytes = 0

    def _head_too_large(self) -> None:
        self._refuse(
            431,
            b"Request Header Fields Too Large",
            f"the request line and headers are larger than the limit of "
            f"{self.limits.max_header_bytes // 1024} KB",
        )

    # -- timeouts ------------------------------------------------------------------------------

    def _start_read_timer(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.limits.read_timeout, self._read_timed_out)

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self._reading_head and self.cycle.response_started:
            self.transport.close()  # the app answered already (e.g. 413) and the body trickles on
            return
        self._refuse(
            408,
            b"Request Timeout",
            f"the request did not arrive whole within {self.limits.read_timeout:g} s",
        )

    def _refuse(self, status: int, reason: bytes, message: str) -> None:
        """Answer ``status`` on the wire (the app never saw this request) and close."""
        if self._discarding or self.transport.is_closing():
            return
        self._discarding = True
        self._stop_read_timer()
        client = f"{self.client[0]}" if self.client else "-"
        request_log.info("%s - - %d %s", client, status, message)
        self.transport.write(_raw_response(status, reason, message))
        self.transport.close()


async def _too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    client = scope.get("client")
    request_log.info("%s - - 503 over the connection limit", client[0] if client else "-")
    await send_bytes(
        send,
        503,
        dumps_json({"error": "the server has too many open connections; try again shortly"}),
        extra_headers=[(b"retry-after", b"1"), (b"connection", b"close")],
    )
