"""ASGI middleware in front of the BentoML app: framing, size, time and content-type limits, readable 4xx bodies.

- Framing (RFC 9112 section 6.3): a request carrying both Content-Length and
  Transfer-Encoding is refused with 400 and the connection closed; its body could be
  read two ways, and h11 reads it as chunked while a size check trusts the length.
- Size: the body's bytes are counted as they arrive, whatever the headers say, and
  the request gets 413 once the count passes the limit (at once when Content-Length
  already says so). A huge upload never reaches the parser.
- Time: the whole body must arrive within MODELSERVE_BODY_TIMEOUT_S of the headers,
  else 408 and the connection is closed (a body that never comes held a connection
  for BentoML's 120 s request timeout). Headers have their own limit, in
  service/patches/uvicorn_header_timeout.py, because uvicorn handles them before any ASGI code.
- JSON bodies are bounded before anything parses them: parsing holds the worker's
  event loop and every thread of it (json and pydantic hold the GIL), so two 14 MB rows
  of a million keys stalled /readyz for 3 s. A route's JSON may be no larger than its
  items can need (MODELSERVE_MAX_ITEMS x its task's item size), and a body may hold at
  most MODELSERVE_MAX_JSON_VALUES values (commas and colons, counted as the body
  arrives); beyond either, 413 with what to send instead, before it is parsed.
- Multipart bodies are checked before BentoML parses them (missing boundary, garbage,
  an unnamed part, too many parts or fields, a text field where a file belongs): 400
  with what was wrong. Starlette raises on each of these and BentoML answered 500,
  and BentoML fetches a *text* field of a file parameter as a URL.
- A POST with a content type the route does not take gets 415; BentoML would
  otherwise parse anything as JSON. A route entry ending in "/" covers the paths under
  it (the v2 protocol's /v2/models/{name}/.../infer, every model's /models/{name}/predict),
  for content types and multipart file fields alike.
- BentoML's 400 for a validation error says "1 validation error for Input"; the
  guard rewrites `error` into what was wrong and where ("texts[1]: is empty"),
  keeping pydantic's `detail` list, and caps what an error body quotes.
- It counts the requests in flight in this process (`requests_in_flight`): the
  executor runs a request that is alone on the event loop, skipping the thread hop.
- Client errors are logged by BentoML at ERROR level with a traceback; the log
  filter turns those into one INFO line, so the error log is for real errors. The
  guard's own refusals are logged as one INFO line too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.core.errors import ModelServeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_ERROR_CHARS = 2_000  # longest `error` message an answer quotes
MAX_DETAIL_ITEMS = 20  # most pydantic `detail` entries an answer lists
MAX_RAW_ERROR_BYTES = 4_096  # a 4xx body that is not JSON is cut here
MAX_FORM_FIELDS = 16  # text fields in one multipart request (the APIs take files only)
V2_HEADER_LENGTH = "inference-header-content-length"  # the v2 protocol: the body's JSON part, binary tensors after it
LINGER_S = 5.0  # how long a refused request's body is still read and dropped before the connection closes
LINGER_IDLE_S = 0.5  # ... unless the client pauses this long (it is waiting for the answer)
DRAIN_PAUSE_S = 0.002  # between two chunks of a refused body being dropped
log = logging.getLogger("modelserve.guard")


class Refusal(Exception):
    """The guard answers this request itself: status, message, and whether to close the connection."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


async def _send_json(send: Send, status: int, body: Mapping[str, Any], *, close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))  # uvicorn closes the connection after this response
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _where(loc: list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "function-after[decode()]")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text


def cap(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """At most `limit` characters of a message, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


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


def capped_error_body(raw: bytes) -> bytes:
    """A 4xx body with a readable `error`, at most MAX_DETAIL_ITEMS details and every message capped."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw if len(raw) <= MAX_RAW_ERROR_BYTES else raw[:MAX_RAW_ERROR_BYTES] + b"... (cut)"
    if isinstance(body, list) and len(body) == 1:  # BentoML wraps some errors in a list
        body = body[0]
    if not isinstance(body, dict):
        return raw[:MAX_RAW_ERROR_BYTES]
    if isinstance(body.get("detail"), list):
        body["error"] = readable_validation_error(body)
        details = body["detail"]
        if len(details) > MAX_DETAIL_ITEMS:
            body["detail"], body["detail_omitted"] = details[:MAX_DETAIL_ITEMS], len(details) - MAX_DETAIL_ITEMS
        for item in body["detail"]:
            if isinstance(item, dict):
                item.pop("input", None)
                item["msg"] = cap(str(item.get("msg", "")), MAX_ERROR_CHARS // 4)
    if "error" in body:
        body["error"] = cap(str(body["error"]))
    return json.dumps(body).encode()


class _MultipartCheck:
    """python-multipart callbacks that count parts and check each one's Content-Disposition (Starlette's rules)."""

    def __init__(self, file_fields: tuple[str, ...], max_files: int) -> None:
        self.file_fields, self.max_files = file_fields, max_files
        self.files = self.fields = 0
        self.header, self.value, self.disposition = b"", b"", b""
        self.ended = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.strip().lower() == b"content-disposition":
            self.disposition = self.value
        self.header, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.disposition = b""
        name = options.get(b"name", b"").decode("latin-1")
        if not name:
            raise Refusal(400, 'a multipart part has no name: send Content-Disposition: form-data; name="..."')
        if b"filename" in options:  # Starlette's rule: a part with a filename is a file
            self.files += 1
            if name not in self.file_fields:
                raise Refusal(400, f"multipart part {cap(name, 100)!r} is a file; only {' and '.join(self.file_fields)} take files")
            if self.files > self.max_files:
                raise Refusal(400, f"more than {self.max_files} files in one request (MODELSERVE_MAX_ITEMS)")
        else:
            self.fields += 1
            if name in self.file_fields:
                raise Refusal(400, f"{name}: must be a file upload (a part with a filename), not a text field")
            if self.fields > MAX_FORM_FIELDS:
                raise Refusal(400, f"more than {MAX_FORM_FIELDS} text fields in one multipart request")

    def on_end(self) -> None:
        self.ended = True


def json_too_large(path: str, size: int, limit: int) -> str:
    return f"JSON body of {size:,} bytes, over the {limit:,} that {path} can need (MODELSERVE_MAX_ITEMS items at most)"


class JsonBudget:
    """A JSON body's bounds, checked chunk by chunk as it arrives (never a scan of the whole body on the event loop).

    Its route's size (`limit`), and `max_values` values (commas and colons, counted at C
    speed, a chunk at a time as uvicorn hands them over, so that other requests run in
    between). On the v2 protocol only the JSON part before binary tensor data counts.
    """

    def __init__(self, path: str, limit: int | None, max_values: int, headers: Mapping[str, str]) -> None:
        self.path, self.limit, self.max_values = path, limit, max_values
        length = headers.get(V2_HEADER_LENGTH, "").strip()
        self.json_bytes = int(length) if length.isascii() and length.isdigit() else None  # None: all of the body is JSON
        self.seen = self.values = 0

    def take(self, chunk: bytes) -> None:
        if self.json_bytes is not None:
            chunk = chunk[: max(0, self.json_bytes - self.seen)]
        self.seen += len(chunk)
        if self.limit is not None and self.seen > self.limit:
            raise Refusal(413, json_too_large(self.path, self.seen, self.limit), close=True)
        if chunk and self.values <= self.max_values:
            self.values += chunk.count(b",") + chunk.count(b":")
            if self.values > self.max_values:
                raise Refusal(
                    413,
                    f"JSON body with more than MODELSERVE_MAX_JSON_VALUES={self.max_values:,} values: "
                    "send images as files (multipart) or base64 strings, and large v2 tensors as binary tensor data",
                    close=True,
                )


def multipart_problem(content_type: str, body: bytes, file_fields: tuple[str, ...], max_files: int) -> str | None:
    """Why a multipart body cannot be used (None when it can), decided the way Starlette will parse it.

    `file_fields` must be files and only they may be; BentoML would fetch a text field
    of a file parameter as a URL.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        return "multipart body without a boundary: send Content-Type: multipart/form-data; boundary=..."
    check = _MultipartCheck(file_fields, max_files)
    try:
        parser = MultipartParser(boundary, check.callbacks())  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Refusal as refusal:
        return refusal.message
    except (FormParserError, ValueError) as exc:
        return f"invalid multipart body: {cap(str(exc), 200)}"
    return None if check.ended else "multipart body ends before its closing boundary"


def lookup(table: Mapping[str, tuple[str, ...]], path: str) -> tuple[str, ...] | None:
    """`path`'s own entry, else the longest entry ending in "/" that prefixes it (/v2/, /models/), else None."""
    if path in table:
        return table[path]
    prefixes = [p for p in table if p.endswith("/") and path.startswith(p)]
    return table[max(prefixes, key=len)] if prefixes else None


class InFlight:
    """HTTP requests of this process between arrival and the end of their response (the executor's idle test reads it)."""

    count = 0


IN_FLIGHT = InFlight()


def requests_in_flight() -> int:
    return IN_FLIGHT.count


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_request_bytes: int,
        content_types: Mapping[str, tuple[str, ...]],
        file_fields: Mapping[str, tuple[str, ...]] | None = None,
        max_files: int = 64,
        body_timeout_s: float = 60.0,
        json_bytes: Mapping[str, int] | None = None,
        max_json_values: int = 200_000,
    ) -> None:
        self.app = app
        self.json_bytes = json_bytes or {}
        self.max_json_values = max_json_values
        self.max_request_bytes = max_request_bytes
        self.content_types = content_types
        self.file_fields = file_fields or {}
        self.max_files = max_files
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        IN_FLIGHT.count += 1
        try:
            try:
                buffered = await self._admit(scope, receive)
            except Refusal as refusal:
                await self._refuse(scope, receive, send, refusal)
                return
            if buffered is None:  # the client went away while sending
                return
            await self.app(scope, self._replay(buffered, receive), self._rewriting(send))
        finally:
            IN_FLIGHT.count -= 1

    async def _admit(self, scope: Scope, receive: Receive) -> list[Message] | None:
        """Check framing and content type, read the whole body within the limits, check a multipart body."""
        raw_headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        headers = dict(raw_headers)
        if "transfer-encoding" in headers and "content-length" in headers:
            raise Refusal(400, "request has both Content-Length and Transfer-Encoding; send one (RFC 9112, section 6.3)", close=True)
        length = headers.get("content-length")
        if length is not None and not (length.isascii() and length.isdigit()):  # h11 refuses most; isdigit() takes '²', int() does not
            raise Refusal(400, f"invalid Content-Length {cap(length, 40)!r}", close=True)
        if length is not None and int(length) > self.max_request_bytes:
            raise Refusal(413, self._too_large(int(length)), close=True)
        allowed = self._accepted(scope["path"]) if scope["method"] == "POST" else None
        content_type = headers.get("content-type", "")
        json_limit = self.json_bytes.get(scope["path"]) if content_type.lower().startswith("application/json") else None
        if length is not None and json_limit is not None and int(length) > json_limit:  # refused before a byte of it is read
            raise Refusal(413, json_too_large(scope["path"], int(length), json_limit), close=True)
        if allowed is not None:
            media_type = content_type.split(";")[0].strip().lower()
            if media_type not in allowed:
                accepted = " or ".join(t or "none" for t in allowed)  # "": no Content-Type header (tritonclient sends none)
                message = f"content type {cap(media_type, 100) or '(none)'!r} is not accepted by {scope['path']}; send {accepted}"
                raise Refusal(415, message, close=True)
        multipart = content_type.lower().startswith("multipart/")
        budget = None if allowed is None or multipart else JsonBudget(scope["path"], json_limit, self.max_json_values, headers)
        buffered = await self._read_body(receive, budget)
        fields = lookup(self.file_fields, scope["path"])
        if buffered is not None and fields and multipart:
            body = b"".join(m.get("body", b"") for m in buffered if m["type"] == "http.request")
            problem = multipart_problem(content_type, body, fields, self.max_files)
            if problem:
                raise Refusal(400, problem)
        return buffered

    def _accepted(self, path: str) -> tuple[str, ...] | None:
        """The content types a POST to `path` may have."""
        return lookup(self.content_types, path)

    def _too_large(self, size: int | None) -> str:
        got = f"{size:,} bytes" if size is not None else "larger"
        return f"request body is {got}, over the limit of {self.max_request_bytes:,} bytes (MODELSERVE_MAX_REQUEST_BYTES)"

    async def _read_body(self, receive: Receive, budget: JsonBudget | None = None) -> list[Message] | None:
        """The body's messages, counted as they arrive (bytes; a JSON body's size and values too); None when the client disconnects."""
        messages, total = [], 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None
                    messages.append(message)
                    total += len(message.get("body", b""))
                    if total > self.max_request_bytes:
                        raise Refusal(413, self._too_large(None), close=True)
                    if budget is not None:
                        budget.take(message.get("body", b""))
                    if not message.get("more_body", False):
                        return messages
        except TimeoutError:
            raise Refusal(
                408, f"the request body did not arrive within {self.body_timeout_s:g} s (MODELSERVE_BODY_TIMEOUT_S)", close=True
            ) from None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
        """Answer a refused request and log it as a client error (one INFO line).

        A refusal that closes the connection first reads and drops what the client is
        still sending, for at most LINGER_S: closing a socket with unread data resets
        it, and the client would see a reset instead of the answer.
        """
        log.info("%s %s refused with %d: %s", scope["method"], scope["path"], refusal.status, refusal.message)
        expects_continue = any(k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in scope.get("headers", []))
        if refusal.close and refusal.status != 408 and not expects_continue:  # (reading would invite the body in)
            await self._drain(receive)
        await _send_json(send, refusal.status, {"error": refusal.message}, close=refusal.close)

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Read and drop the body until it ends, pauses for LINGER_IDLE_S, or LINGER_S have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(left, LINGER_IDLE_S)):
                    message = await receive()
            except TimeoutError:
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            # Unhurried: uvicorn stops reading the socket while a message waits, so the client is slowed down by
            # TCP itself, and a worker that refuses 30 MB bodies back to back spends its loop on health checks,
            # not on chunks it throws away (benchmarks/health.py --heavy v2-json).
            await asyncio.sleep(DRAIN_PAUSE_S)

    @staticmethod
    def _replay(messages: list[Message], receive: Receive) -> Receive:
        """The buffered body, then the real receive (which reports a disconnect when it comes)."""
        queue = list(messages)

        async def replay() -> Message:
            return queue.pop(0) if queue else await receive()

        return replay

    @staticmethod
    def _rewriting(send: Send) -> Send:
        """Give 4xx bodies a readable, capped `error` (and unwrap BentoML's one-item lists)."""
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
            raw = capped_error_body(b"".join(state.pop("chunks")))
            start = state.pop("start")
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
            summary = cap(str(exc).splitlines()[0], 300) if exc else record.exc_info[0].__name__
            record.msg = f"{record.getMessage()}: rejected input ({summary})"
            record.args = ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True
