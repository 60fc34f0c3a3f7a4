"""The one exception tree of ``deliberate``.

Everything the library raises on purpose derives from :class:`DeliberateError`::

    DeliberateError
    ├── UsageError                 the user asked for something that cannot work
    │   ├── ConfigError            a bad configuration value or file
    │   ├── UnknownNameError       unknown strategy, backend, suite, verifier, …
    │   ├── DataError              an unreadable or malformed data file / row
    │   └── MissingDependencyError an optional extra is not installed
    ├── ModelError                 a model call failed after the middleware gave up
    │   ├── ModelConnectionError   the endpoint could not be reached
    │   ├── ModelTimeoutError      the endpoint did not answer in time
    │   ├── ModelHTTPError         the endpoint answered with an error status
    │   │   └── ModelRateLimitError   429
    │   ├── ModelAuthError         401/403: missing or wrong key
    │   └── ModelResponseError     the endpoint answered with something unusable
    ├── BudgetExceeded             a budget would be exceeded; strategies stop cleanly
    ├── SandboxError               the code sandbox could not run a program at all
    └── StoreError                 the database cannot be used (schema, connection)

Usage errors are the user's to fix and the CLI prints them as one line; run
errors carry what the user needs to act (status, body, endpoint).
"""

from __future__ import annotations


class DeliberateError(Exception):
    """Base of every error raised on purpose by deliberate."""


class UsageError(DeliberateError):
    """The request cannot work as given; the message says what to change."""


class ConfigError(UsageError):
    """A configuration value or file is invalid."""


class UnknownNameError(UsageError):
    """A name (strategy, backend, suite, verifier) is not registered."""


class DataError(UsageError):
    """A data file or a row in it cannot be read."""


class MissingDependencyError(UsageError):
    """An optional extra is needed; the message carries the exact pip command."""

    def __init__(self, what: str, extra: str, package: str | None = None) -> None:
        hint = f'pip install "deliberate[{extra}]"'
        if package:
            hint += f" (or: pip install {package})"
        super().__init__(f"{what} needs the '{extra}' extra: {hint}")
        self.extra = extra


class ModelError(DeliberateError):
    """A model call failed for good (after retries where they apply)."""

    retryable: bool = False


class ModelConnectionError(ModelError):
    """The endpoint could not be reached."""

    retryable = True


class ModelTimeoutError(ModelError):
    """The endpoint did not answer within the timeout."""

    retryable = True


class ModelHTTPError(ModelError):
    """The endpoint answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status == 429 or self.status == 408 or self.status >= 500


class ModelRateLimitError(ModelHTTPError):
    """429 Too Many Requests."""


class ModelAuthError(ModelError):
    """The endpoint refused the credentials (401/403) or none were given."""


class ModelResponseError(ModelError):
    """The endpoint answered, but not with a usable completion."""


class BudgetExceeded(DeliberateError):
    """Raised when a call would exceed a budget; strategies stop with their best so far."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class SandboxError(DeliberateError):
    """The sandbox itself failed (isolation could not be set up): no verdict on the code."""


class StoreError(DeliberateError):
    """The store cannot be opened or used (connection, schema version)."""
