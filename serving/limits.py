"""Bounded request bodies, checked before anything parses them (an ASGI middleware of the service).

A body larger than ``limits.max_body_bytes`` gets 413 as soon as its Content-Length says so, or as
soon as its streamed bytes pass the limit (chunked uploads have no length). A /predict body holding
more than ``limits.max_predict_requests`` requests gets 413 naming the limit, before the requests are
validated or batched. Either answer takes milliseconds, however large or pathological the body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def _refuse(send: Send, field: str, detail: str) -> None:
    body = json.dumps({"detail": detail, "field": field}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def count_requests(body: bytes) -> int | None:
    """The number of requests in a /predict body (``{"requests": [...]}`` or a bare list); None when it is
    not JSON of that shape (the service's own validation then answers with the details)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    items = data.get("requests") if isinstance(data, dict) else data
    return len(items) if isinstance(items, list) else None


class BodyLimit:
    """The ASGI middleware: buffers a body up to ``max_body_bytes`` (never more), then hands it on."""

    def __init__(self, app, max_body_bytes: int, max_predict_requests: int, predict_path: str = "/predict"):
        self.app, self.max_body, self.max_requests, self.predict_path = (
            app,
            max_body_bytes,
            max_predict_requests,
            predict_path,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _refuse(send, "body", f"larger than {self.max_body} bytes (limits.max_body_bytes)")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _refuse(send, "body", f"larger than {self.max_body} bytes (limits.max_body_bytes)")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if scope["path"].rstrip("/") == self.predict_path:
            n = count_requests(body)
            if n is not None and n > self.max_requests:
                return await _refuse(
                    send,
                    "requests",
                    f"{n} requests in one call; at most {self.max_requests} (limits.max_predict_requests)",
                )
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)
