"""ASGI middleware in front of the BentoML app: size and content-type limits, readable 4xx bodies.

- A body over the byte limit gets 413 before it is read (Content-Length) or as soon
  as it passes the limit (chunked), so a huge upload never reaches the parser.
- A POST with a content type the route does not take gets 415; BentoML would
  otherwise parse anything as JSON. A route entry ending in "/" covers the paths under
  it (the v2 protocol's /v2/models/{name}/.../infer).
- BentoML's 400 for a validation error says "1 validation error for Input"; the
  guard rewrites `error` into what was wrong and where ("texts[1]: is empty"),
  keeping pydantic's `detail` list.
- Client errors are logged by BentoML at ERROR level with a traceback; the log
  filter turns those into one INFO line, so the error log is for real errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from service.core.errors import ModelServeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_json(send: Send, status: int, body: Mapping[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _where(loc: list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "function-after[decode()]")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text


def readable_validation_error(body: Mapping[str, Any]) -> str:
    """'texts[1]: is empty; texts[3]: must be a string' from pydantic's error list."""
    messages = []
    for item in body.get("detail") or []:
        if not isinstance(item, Mapping):
            continue
        msg = str(item.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if item.get("type") == "json_invalid":
            messages.append(f"invalid JSON: {msg.removeprefix('Invalid JSON: ')}")
            continue
        where = _where(list(item.get("loc") or []))
        messages.append(f"{where}: {msg}" if where else msg)
    return "; ".join(messages) or str(body.get("error", "invalid request"))


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_request_bytes: int, content_types: Mapping[str, tuple[str, ...]]) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.content_types = content_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        allowed = self._accepted(scope["path"])
        if allowed is not None:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in allowed:
                accepted = " or ".join(t or "none" for t in allowed)  # "": no Content-Type header (tritonclient sends none)
                await _send_json(
                    send,
                    415,
                    {"error": f"content type {content_type or '(none)'!r} is not accepted by {scope['path']}; send {accepted}"},
                )
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, {"error": f"invalid Content-Length {length!r}"})
                return
            if int(length) > self.max_request_bytes:
                await _send_json(send, 413, {"error": self._too_large(int(length))})
                return
        else:
            buffered = await self._buffer(receive)
            if buffered is None:
                await _send_json(send, 413, {"error": self._too_large(None)})
                return
            receive = self._replay(buffered)
        await self.app(scope, receive, self._rewriting(send))

    def _accepted(self, path: str) -> tuple[str, ...] | None:
        """The content types a POST to `path` may have: its own entry, else the longest entry ending in "/" that prefixes it."""
        if path in self.content_types:
            return self.content_types[path]
        prefixes = [p for p in self.content_types if p.endswith("/") and path.startswith(p)]
        return self.content_types[max(prefixes, key=len)] if prefixes else None

    def _too_large(self, size: int | None) -> str:
        got = f"{size:,} bytes" if size is not None else "larger"
        return f"request body is {got}, over the limit of {self.max_request_bytes:,} bytes (MODELSERVE_MAX_REQUEST_BYTES)"

    async def _buffer(self, receive: Receive) -> list[Message] | None:
        """Read a body of unknown length; None once it passes the limit."""
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.max_request_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    @staticmethod
    def _replay(messages: list[Message]) -> Receive:
        queue = list(messages)

        async def receive() -> Message:
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        return receive

    @staticmethod
    def _rewriting(send: Send) -> Send:
        """Give 4xx bodies a readable `error` (and unwrap BentoML's one-item lists)."""
        state: dict[str, Any] = {}

        async def rewriting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500:
                    state["start"], state["chunks"] = message, []
                    return
                await send(message)
                return
            if "start" not in state:
                await send(message)
                return
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            raw = b"".join(state.pop("chunks"))
            start = state.pop("start")
            try:
                body = json.loads(raw)
                if isinstance(body, list) and len(body) == 1:  # BentoML wraps some errors in a list
                    body = body[0]
                if isinstance(body, dict) and "detail" in body:
                    body["error"] = readable_validation_error(body)
                raw = json.dumps(body).encode()
            except (ValueError, TypeError):
                pass
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(raw)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": raw})

        return rewriting_send


def is_client_error(exc: BaseException) -> bool:
    """A request the client got wrong: a validation error, or an error whose status is 4xx."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    if isinstance(exc, ModelServeError):
        return 400 <= exc.http_status < 500
    if isinstance(exc, BentoMLException):
        return 400 <= exc.error_code.value < 500
    return False


class ClientErrorLogFilter(logging.Filter):
    """Turn BentoML's ERROR + traceback for a rejected request into one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info and record.exc_info[1] is not None and is_client_error(record.exc_info[1]):
            exc = record.exc_info[1]
            summary = str(exc).splitlines()[0] if exc else record.exc_info[0].__name__
            record.msg = f"{record.getMessage()}: rejected input ({summary})"
            record.args = ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True
