"""Security headers on every response of ours: `X-Content-Type-Options: nosniff` and a Content-Security-Policy.

nosniff: a browser must take a response for the type it says (a JSON error that quotes
the client's input is never run as a script or a page). The CSP holds an HTML page to
this origin: the playground sends its own, stricter one (service/http/playground.py);
every other response gets DEFAULT_POLICY, which lets BentoML's Swagger UI (its own
scripts and styles, served here) work and blocks what its page would fetch from
elsewhere (a Google Tag Manager script). Responses made outside the ASGI app carry the
same headers: the 408 and 431 of service/patches/uvicorn_header_timeout.py, the 504 of
service/patches/bentoml_request_timer.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

DEFAULT_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "content-security-policy": DEFAULT_POLICY}


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` plus each security header it does not set itself (a page's own policy wins)."""
    present = {name.lower() for name, _ in headers}
    return headers + [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items() if name.encode() not in present]


def raw_security_headers() -> str:
    """The security headers as lines of an HTTP/1.1 response head (for responses written to the socket directly)."""
    return "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items())


class SecurityHeaders:
    """ASGI middleware: every HTTP response leaves with the security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_security_headers(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_headers)
