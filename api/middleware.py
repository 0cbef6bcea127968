"""ASGI middleware around every request: a limit on the body's size, and the server's time per request.

Both are plain ASGI (no BaseHTTPMiddleware), so they cost a function call or two per request and never
buffer a body themselves.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LIMIT_SETTING = "SOCE_MAX_REQUEST_BYTES"


def body_too_large(limit: int) -> HTTPException:
    """The error for a request body over the limit; raised from `receive`, so the route reading the body
    stops there and FastAPI answers it like any HTTPException: {"detail": ...} with status 413."""
    return HTTPException(413, _too_large(limit), headers={"Connection": "close"})


def _too_large(limit: int) -> str:
    return (
        f"the request body is larger than {limit} bytes, the most this server reads (set by {LIMIT_SETTING})"
    )


class BodySizeLimit:
    """Refuses request bodies over `limit` bytes with 413, without reading what is left of them.

    A Content-Length over the limit is refused before the body is read at all; otherwise the body is
    counted as it arrives (a chunked one declares no length), and the read that takes it past the
    limit raises a 413 HTTPException.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), None)
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise body_too_large(self.limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except HTTPException as e:
            if e.status_code != 413 or started:  # the app answered before reading it all: nothing to add
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": _too_large(self.limit)}, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the rest of the body is never read
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ServerTiming:
    """Adds `Server-Timing: app;dur=<milliseconds>` to every response: the time from the request's
    arrival here to its response's headers, so clients can tell the server's time from the network's.

    Registered last, it wraps every other middleware the app adds; only a response to an unhandled
    error, sent by Starlette's outermost middleware, goes without it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - started) * 1000
                headers = [*message.get("headers", ()), (b"server-timing", b"app;dur=%.2f" % ms)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed_send)


class ConcurrencyLimit:
    """Lets at most `limit` requests into the app at once; the others wait here, in arrival order.

    Sync routes run in a thread pool of 40 threads sharing one interpreter lock: with 50 clients, every
    request admitted at once makes every other slower, and a request's time in the app is mostly the
    others' work. Admitting a few at a time keeps each request's time close to its own work (the
    Server-Timing header, inside this limit, measures that), and the wait in front of the app is the
    queue a client sees anyway. The lifespan and websockets pass through.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            await self.app(scope, receive, send)
