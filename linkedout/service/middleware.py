"""Two ASGI middlewares that answer before the app reads a request: bodies over the size limit
(413) or slower than the body timeout (408), and rankings over the in-flight limit (503 with
Retry-After; the rankings let through carry their server-side time in Server-Timing)."""

from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """Reads the whole body first (it is small by construction) and refuses it past `limit`
    bytes, whether or not the client sent Content-Length, or when it has not arrived in full
    within `timeout` seconds: uvicorn has no such limit, so a body shorter than its
    Content-Length would otherwise hold its connection (and a slot) open forever."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                late = problem(
                    408,
                    f"the request body did not arrive in full within {self.timeout:g} s (is it "
                    "shorter than its Content-Length?): send the whole body at once",
                    {"Connection": "close"},  # what is left of it is never read
                )
                await late(scope, receive, send)
                return
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when it comes

        await self.app(scope, replay, send)

    def _too_large(self) -> JSONResponse:  # built when needed: most requests never are
        return problem(
            413, f"the request body is over this server's {self.limit // 1024} KiB: send less"
        )


class LoadShedding:
    """At most `limit` requests to `paths` at once (one event loop: a plain counter)."""

    def __init__(self, app: ASGIApp, limit: int, paths: tuple[str, ...]):
        self.app, self.limit, self.paths = app, limit, paths
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            busy = problem(
                503,
                f"the server is at capacity ({self.limit} rankings in flight): retry shortly",
                {"Retry-After": "1"},
            )
            await busy(scope, receive, send)
            return
        self.in_flight += 1
        began = time.perf_counter()

        async def timed(message: Message) -> None:
            # Server-Timing (a standard header): the server's own share of the latency a
            # client sees, queueing for the ranking thread included.
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - began) * 1000
                headers = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={ms:.2f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            self.in_flight -= 1
