"""Raw ASGI plumbing: the request-size limit and request log middleware, body and header helpers.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would cost more per request than
the whole prediction.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitnet.serving.protocol import MAX_BODY_BYTES, BodyTooLarge, dumps_json

#: One line per request: client, method, path, status, milliseconds.
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
    """Refuse bodies over ``max_body_bytes`` (413) and log one line per request.

    The limit is checked on Content-Length before reading anything, and again while the body
    arrives (chunked uploads declare no length).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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
            await self._limited(scope, receive, send_logged)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = scope.get("client")
            log.info(
                "%s %s %s %d %.1f ms",
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000.0,
            )

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
