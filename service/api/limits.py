"""Request body limits, answered with the API's JSON error body (413) before a route reads on."""

from __future__ import annotations

import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DATA_PATH = re.compile(r"^/v1/jobs/[^/]+/data/?$")


class BodyLimitMiddleware:
    """``max_push_bytes`` for POST /v1/jobs/{id}/data, ``max_request_bytes`` for the rest.

    A declared Content-Length above the limit is refused at once; a body without one (chunked) is
    counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, *, max_push_bytes: int, max_request_bytes: int) -> None:
        self.app = app
        self.max_push_bytes = max_push_bytes
        self.max_request_bytes = max_request_bytes

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if DATA_PATH.match(scope["path"]):
            return self.max_push_bytes, "LIFELONG_MAX_PUSH_BYTES"
        return self.max_request_bytes, "LIFELONG_MAX_REQUEST_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > limit:
            await _send_413(send, _message(f"{declared:,} bytes", limit, setting))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes FastAPI's body reader unchanged (to the 413 handler).
                    raise HTTPException(413, _message(f"more than {limit:,} bytes", limit, setting))
            return message

        await self.app(scope, limited_receive, send)


def _message(size: str, limit: int, setting: str) -> str:
    hint = (
        "split the push into smaller batches"
        if setting == "LIFELONG_MAX_PUSH_BYTES"
        else "send a smaller body"
    )
    return f"the body has {size}, above the limit of {limit:,} bytes ({setting}); {hint}"


async def _send_413(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
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
