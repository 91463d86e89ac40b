"""Raw ASGI plumbing: the middleware every request passes (Host and Origin checks, body-size
limit, request log) and body and header helpers.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would cost more per request than
the whole prediction, and rather than Starlette's TrustedHostMiddleware, which answers plain
text where every error here answers ``{"error"}``.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitnet.serving.limits import LOOPBACK_HOSTS
from digitnet.serving.protocol import MAX_BODY_BYTES, BodyTooLarge, dumps_json
from digitnet.serving.trust import host_refusal, origin_refusal, printable

#: One line per request: client, method, path, status, milliseconds. The path is logged as
#: sent (percent-encoded) with anything unprintable escaped, so no request can forge a line.
log = logging.getLogger(__name__)


async def read_body(receive: Receive) -> bytes:
    """The whole request body; ConnectionAbortedError if the client leaves first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("the client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + (extra_headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the (lower-case) header ``name``, or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class LimitAndLogMiddleware:
    """Refuse a Host not in ``allowed_hosts`` (400), a cross-origin POST (403) and a body over
    ``max_body_bytes`` (413), before the app sees the request; log one line per request.

    The size limit is checked on Content-Length before reading anything, and again while the
    body arrives (chunked uploads declare no length).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = MAX_BODY_BYTES,
        allowed_hosts: frozenset[str] = frozenset(LOOPBACK_HOSTS),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if not await self._refused(scope, send_logged):
                await self._limited(scope, receive, send_logged)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = scope.get("client")
            path = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
            log.info(
                "%s %s %s %d %.1f ms",
                printable(str(client[0])) if client else "-",
                printable(scope["method"], 20),
                printable(path.decode("latin-1")),
                status,
                (time.perf_counter() - started) * 1000.0,
            )

    async def _refused(self, scope: Scope, send: Send) -> bool:
        """Answer a request from an untrusted Host or Origin; True if it was refused."""
        host = header(scope, b"host")
        message = host_refusal(host, self.allowed_hosts)
        status = 400
        if message is None:
            message = origin_refusal(
                scope["method"], host, header(scope, b"origin"), header(scope, b"sec-fetch-site")
            )
            status = 403
        if message is None:
            return False
        await send_bytes(
            send, status, dumps_json({"error": message}), extra_headers=[(b"connection", b"close")]
        )
        return True

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        declared = header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await send_bytes(
                    send, 400, dumps_json({"error": "Content-Length is not a whole number"})
                )
                return
            if length > limit:
                await send_bytes(
                    send,
                    413,
                    dumps_json({"error": str(BodyTooLarge(limit))}),
                    extra_headers=[(b"connection", b"close")],
                )
                return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_limited, send)
