"""One error hierarchy for every way in: each class carries its HTTP status and CLI exit code.

Like BentoML's `error_code` and KServe's typed errors: the HTTP layer answers an
expected failure with `http_status` and its message, a command line prints one
`error: ...` line and exits with `exit_code` (see `run_cli`). Anything that is not a
`ModelServeError` is a bug: a 500 on HTTP, a traceback on the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

EXIT_OK = 0
EXIT_FAILED = 1  # the work could not be done (model will not load, a step failed)
EXIT_USAGE = 2  # the command line, configuration or input as a whole is wrong
EXIT_ROWS_FAILED = 3  # batch jobs: finished, but some inputs could not be scored
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM, as shells report Ctrl-C


class ModelServeError(Exception):
    """An expected failure whose message is meant for people.

    A subclass states its HTTP status and exit code in its class line:
    `class NotFoundError(ModelServeError, http_status=404, exit_code=EXIT_USAGE)`.
    """

    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init_subclass__(cls, http_status: int | None = None, exit_code: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if http_status is not None:
            cls.http_status = http_status
        if exit_code is not None:
            cls.exit_code = exit_code


class ConfigError(ModelServeError, ValueError, exit_code=EXIT_USAGE):
    """A MODELSERVE_* variable has a value that cannot be used."""


class InputError(ModelServeError, ValueError, http_status=400, exit_code=EXIT_USAGE):
    """One input item (image, text, feature row) cannot be processed; the client's mistake.

    A ValueError too, so that pydantic turns it into a per-request validation error.
    """


class UsageError(ModelServeError, http_status=400, exit_code=EXIT_USAGE):
    """A command line, or a request as a whole, asks for something that cannot be done as given."""


class NotFoundError(ModelServeError, http_status=404, exit_code=EXIT_USAGE):
    """A model or version that is not served or not in the registry."""


class RegistryError(ModelServeError, http_status=409, exit_code=EXIT_USAGE):
    """The registry is missing something or a version is not usable."""


class ModelLoadError(ModelServeError, http_status=409):
    """A model version could not be loaded or failed its smoke prediction."""


class ReloadRefused(ModelServeError, http_status=409):
    """A new version was not swapped in; the old one keeps serving."""


class Overloaded(ModelServeError, http_status=503):
    """More work is in flight than this worker takes on; the client should retry shortly (503 + Retry-After)."""

    retry_after_s: ClassVar[int] = 1


class NotReady(Overloaded):
    """This worker is not serving yet (its models are still loading): 503 + Retry-After, gRPC's UNAVAILABLE."""


class DataError(ModelServeError, ValueError, exit_code=EXIT_USAGE):
    """Training data cannot be used; the message says why."""


class ExportError(ModelServeError):
    """An export produced a graph without the expected interface, or one that disagrees with Keras."""


class DeployError(ModelServeError):
    """A redeploy step failed; the message says which and why."""


class Interrupted(ModelServeError, exit_code=EXIT_INTERRUPTED):
    """SIGINT or SIGTERM: stop, keep what is committed."""


def run_cli(main: Callable[[], int]) -> int:
    """Run a command's body: an expected failure becomes one `error:` line and its exit code."""
    try:
        return main()
    except ModelServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
