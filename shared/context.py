"""Request and trace context: accepted from W3C `traceparent`, `X-Cloud-Trace-Context` and
`X-Request-Id`, generated when absent, and carried in a contextvar so every log line and every
published message of a request or delivery shares the caller's trace id."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CLOUD_TRACE = re.compile(r"^([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=([01]))?$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex: this unit of work's span
    parent_span_id: str | None
    sampled: bool
    request_id: str

    @property
    def traceparent(self) -> str:
        """W3C header value naming this span as the parent of downstream work."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        return replace(self, parent_span_id=self.span_id, span_id=new_span_id())


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def _from_traceparent(value: str) -> tuple[str, str, bool] | None:
    match = _TRACEPARENT.match(value.strip().lower())
    if not match or match.group(1) == "ff":
        return None
    _, trace_id, span_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _from_cloud_trace(value: str) -> tuple[str, str | None, bool] | None:
    match = _CLOUD_TRACE.match(value.strip())
    if not match:
        return None
    trace_id = match.group(1).lower()
    if trace_id == _ZERO_TRACE:
        return None
    span = match.group(2)
    span_id = f"{int(span) & 0xFFFFFFFFFFFFFFFF:016x}" if span and int(span) else None
    return trace_id, span_id, match.group(3) == "1"


def from_headers(headers: Mapping[str, str]) -> TraceContext:
    """Continue the caller's trace (traceparent wins over X-Cloud-Trace-Context) or start one.

    Malformed values are ignored rather than rejected: tracing must never fail a request.
    Header names are matched case-insensitively.
    """
    headers = {k.lower(): v for k, v in headers.items()}
    parent = _from_traceparent(headers.get("traceparent", "") or "")
    trace_id: str
    parent_span: str | None
    if parent:
        trace_id, parent_span, sampled = parent
    else:
        cloud = _from_cloud_trace(headers.get("x-cloud-trace-context", "") or "")
        if cloud:
            trace_id, parent_span, sampled = cloud
        else:
            trace_id, parent_span, sampled = new_trace_id(), None, True
    request_id = (headers.get("x-request-id", "") or "").strip()
    if not _REQUEST_ID.match(request_id):
        request_id = secrets.token_hex(8)
    return TraceContext(trace_id, new_span_id(), parent_span, sampled, request_id)


_current: ContextVar[TraceContext | None] = ContextVar("trace_context", default=None)


def current() -> TraceContext | None:
    """The context of the request or delivery being handled, if any."""
    return _current.get()


@contextmanager
def bound(ctx: TraceContext) -> Iterator[TraceContext]:
    """Make `ctx` current for the duration of the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
