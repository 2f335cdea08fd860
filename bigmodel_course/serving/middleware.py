"""ASGI middleware of the service: metrics of every answer, a catch-all 500 without tracebacks, a body-size limit
and a body-read timeout."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import CLIENT_CLOSED, OTHER, ServiceMetrics

logger = logging.getLogger("bigmodel_course.serving")
INTERNAL_ERROR = "internal server error; the details are in the server log"


def _route_pattern(route: str) -> re.Pattern:
    """A regular expression (for fullmatch) of a route template: '/v1/models/{name}' matches '/v1/models/x'."""
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(route)))


class MetricsMiddleware:
    """Count every HTTP answer by route, method and status and time it (unknown paths share the route 'other').

    A request whose client went away before any answer started counts as status 499 (client closed), not as
    a server error, so nobody can inflate the error rate by hanging up.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Collection[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, frozenset(r for r in routes if "{" not in r)
        self.templates = [(_route_pattern(r), r) for r in routes if "{" in r]

    def route(self, path: str) -> str:
        """The route label of a path: itself, its template ('/v1/admin/models/{name}/promote') or 'other'."""
        if path in self.routes:
            return path
        return next((template for pattern, template in self.templates if pattern.fullmatch(path)), OTHER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, disconnected, start = None, False, time.perf_counter()

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_watching, send_status)
        finally:
            if status is None:
                status = CLIENT_CLOSED if disconnected else 500
            route = self.route(scope["path"])
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)


class CatchAllMiddleware:
    """Any unhandled exception becomes a 500 with a generic message; the traceback goes to the server log only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except ClientDisconnect:  # the client went away mid-request: there is nobody to answer
            logger.info("client closed the connection during %s %s", scope["method"], scope["path"][:200])
        except Exception:
            logger.exception("unhandled error while answering %s %s", scope["method"], scope["path"])
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            await JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)(scope, receive, send)


class BodyLimitMiddleware:
    """Read the whole request body first: refuse it with 413 as soon as it passes `max_bytes` (or its route's own
    limit), with 408 when it has not arrived within `timeout` seconds, and with 400 when the request
    declares both Content-Length and Transfer-Encoding (request smuggling behind a proxy).

    A Content-Length over the limit is refused before any body byte is read; a body without one
    (chunked) is counted while it streams in and refused as soon as the count passes the limit.
    An accepted body is handed on to the application unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, route_limits: dict[str, int] | None = None,
                 timeout: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout
        self.route_limits = [(_route_pattern(route), n) for route, n in (route_limits or {}).items()]

    def limit(self, path: str) -> int:
        """The body limit of a path: its route's own limit (e.g. model uploads), else max_bytes."""
        return next((n for pattern, n in self.route_limits if pattern.fullmatch(path)), self.max_bytes)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        """Answer with an error and close the connection (the rest of the body is never read)."""
        await JSONResponse({"detail": detail}, status_code=status,
                           headers={"Connection": "close"})(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if "transfer-encoding" in headers:
                await self._refuse(scope, receive, send, 400, "a request must not carry both Content-Length and "
                                   "Transfer-Encoding")
                return
            if not re.fullmatch(r"[0-9]{1,20}", declared.strip()):
                await self._refuse(scope, receive, send, 400, f"invalid Content-Length header {declared[:40]!r}")
                return
            if int(declared) > limit:
                await self._refuse(scope, receive, send, 413, f"request body too large: Content-Length is "
                                   f"{int(declared)} bytes; the limit is {limit} bytes")
                return
        chunks, total = [], 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away (counted as 499)
                        return
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > limit:
                        await self._refuse(scope, receive, send, 413, f"request body too large: more than {limit} "
                                           f"bytes arrived; the limit is {limit} bytes")
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(scope, receive, send, 408, f"the request body did not arrive within "
                               f"{self.timeout:g} s ({total} bytes so far)")
            return
        body, delivered = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
