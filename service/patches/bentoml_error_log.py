"""Where BentoML logs a request's exception: the logger the service's client-error filter is attached to.

BentoML logs every exception of an API call, a rejected input among them, at ERROR
level with a traceback, through `log_exception` in an internal module. The filter
(service/http/guard.py, ClientErrorLogFilter) turns the ones that are the client's
fault into one INFO line, so that the error log is for real errors. It is attached to
that module's logger by name: if BentoML logs elsewhere, the filter would silently
stop working, so `check` asserts that the name and the call are still there.
"""

from __future__ import annotations

import logging

from service.patches import Pin, check_source, mark_active

PIN = Pin(
    module=__name__,
    distribution="bentoml",
    version="1.4.39",
    target="bentoml._internal.server.http_app.log_exception",
    purpose="log BentoML's tracebacks for rejected input as one INFO line",
)
LOGGER = "bentoml._internal.server.http_app"


def check() -> None:
    """PatchMismatch unless API exceptions are still logged by `log_exception` on the logger named LOGGER."""
    PIN.check_version()
    from _bentoml_impl.server import app
    from bentoml._internal.server import http_app

    if http_app.logger.name != LOGGER:
        raise PIN.mismatch(f"its logger is named {http_app.logger.name!r}, not {LOGGER!r}")
    if getattr(app, "log_exception", None) is not http_app.log_exception:
        raise PIN.mismatch("_bentoml_impl.server.app no longer logs API exceptions with it")
    check_source(PIN, http_app.log_exception, "logger.error(", "exc_info=exc_info")


def filter_request_errors(log_filter: logging.Filter) -> None:
    """Attach `log_filter` to the logger BentoML logs API exceptions on (after `check`)."""
    check()
    logging.getLogger(LOGGER).addFilter(log_filter)
    mark_active(PIN)
