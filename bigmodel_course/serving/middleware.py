"""ASGI middleware of the service: metrics of every answer, a catch-all 500 without tracebacks, a body-size limit."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServiceMetrics

logger = logging.getLogger("bigmodel_course.serving")
INTERNAL_ERROR = "internal server error; the details are in the server log"


class MetricsMiddleware:
    """Count every HTTP answer by route, method and status and time it (unknown paths share the route 'other')."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Collection[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, frozenset(r for r in routes if "{" not in r)
        self.templates = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(r)) + "$"), r)
                          for r in routes if "{" in r]

    def route(self, path: str) -> str:
        """The route label of a path: itself, its template ('/v1/admin/models/{name}/promote') or 'other'."""
        if path in self.routes:
            return path
        return next((template for pattern, template in self.templates if pattern.match(path)), "other")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, start = 500, time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
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
        except Exception:
            logger.exception("unhandled error while answering %s %s", scope["method"], scope["path"])
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            await JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` (or a path prefix's own limit) with 413 before reading them whole.

    A Content-Length over the limit is refused before any body byte is read; a body without one
    (chunked) is counted while it streams in and refused as soon as the count passes the limit.
    An accepted body (at most `max_bytes`) is handed on to the application unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, prefix_limits: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes, self.prefix_limits = app, max_bytes, dict(prefix_limits or {})

    def limit(self, path: str) -> int:
        """The body limit of a path: the first matching prefix limit (e.g. model uploads), else max_bytes."""
        return next((n for prefix, n in self.prefix_limits.items() if path.startswith(prefix)), self.max_bytes)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        """Answer with an error and close the connection (the rest of the body is never read)."""
        await JSONResponse({"detail": detail}, status_code=status,
                           headers={"Connection": "close"})(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await self._refuse(scope, receive, send, 400, f"invalid Content-Length header {declared[:40]!r}")
                return
            if int(declared) > limit:
                await self._refuse(scope, receive, send, 413, f"request body too large: Content-Length is "
                                   f"{int(declared)} bytes; the limit is {limit} bytes")
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await self._refuse(scope, receive, send, 413, f"request body too large: more than {limit} bytes "
                                   f"arrived; the limit is {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
