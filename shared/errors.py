"""Domain errors and their one mapping to HTTP: `application/problem+json` (RFC 9457) with a
stable machine-readable `code` and the trace id; never a stack trace or raw exception text."""

from __future__ import annotations

from typing import Any

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """An error the client can act on. Subclasses fix the status and default code."""

    status = 500
    code = "internal"
    title = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code:
            self.code = code
        self.headers = headers or {}
        self.extra = extra


class BadRequest(AppError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        super().__init__(detail, **kw)


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(AppError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ValidationFailed(AppError):
    status, code, title = 422, "validation_failed", "Validation failed"


class TooManyRequests(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(AppError):
    status, code, title = 503, "unavailable", "Service unavailable"


def problem(error: AppError, trace_id: str | None, instance: str | None = None) -> dict[str, Any]:
    """The problem+json body for `error`."""
    body: dict[str, Any] = {
        "type": f"https://errors.app.dev/{error.code}",
        "title": error.title,
        "status": error.status,
        "code": error.code,
        "detail": error.detail,
    }
    if instance:
        body["instance"] = instance
    if trace_id:
        body["traceId"] = trace_id
    body.update(error.extra)
    return body
