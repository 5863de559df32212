"""A small router for per-resource HTTP functions.

One `Router` per function: routes declare method, path template, the role they need and their
body schema in one visible place. The router binds the trace context, validates input, maps every
error to problem+json in exactly one place, adds the trace id to every response, and writes one
access log line per request in Cloud Logging's `httpRequest` shape.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask

from shared import context, errors, lazy, tracing
from shared.validation import Schema, parse_json

log = logging.getLogger("shared.http")

MAX_BODY_BYTES = 1024 * 1024
Handler = Callable[["Call"], Any]
Authenticator = Callable[[flask.Request], Any]
TraceSource = Callable[[flask.Request], Mapping[str, str]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: str | None = None  # None: public; otherwise the role the caller must hold
    body: Schema | None = None
    summary: str = ""
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))


@dataclass
class Call:
    """What a handler gets: the raw request, path params, validated body, caller and trace."""

    request: flask.Request
    params: dict[str, str]
    body: dict[str, Any] | None
    trace: context.TraceContext
    principal: Any = None

    @property
    def args(self) -> dict[str, str]:
        return {k: v for k, v in self.request.args.items()}


class Router:
    def __init__(
        self,
        service: str,
        authenticate: Authenticator | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        trace_source: TraceSource | None = None,
        rate_limited: bool = False,
    ) -> None:
        self.service = service
        # Per-caller limits shared across instances; the class and numbers come from the
        # manifest through the environment (RATE_LIMIT_*), unset in unit tests.
        self.rate_limit = _limit_from_env() if rate_limited else None
        # Where the trace context comes from: the request headers unless the function knows
        # better (a push consumer continues the trace of the message it delivers).
        self.trace_source: TraceSource = trace_source or _request_headers
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self.routes: list[Route] = []
        self.route("GET", "/healthz", summary="Liveness and readiness")(self._health)
        if flask.has_app_context():
            # functions-framework loads the function inside its app's context. A request its
            # catch-all rule cannot match (a newline in the path) would get Flask's HTML 404;
            # route it through us instead, for a problem+json 404 with the trace headers.
            flask.current_app.register_error_handler(404, lambda _error: self(flask.request))

    def route(
        self, method: str, path: str, *, role: str | None = None, body: Schema | None = None,
        summary: str = "",
    ) -> Callable[[Handler], Handler]:
        if role is not None and self.authenticate is None:
            raise ValueError(f"{method} {path} needs role {role!r} but the router has no auth")

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method.upper(), path, handler, role, body, summary))
            return handler

        return register

    def _health(self, call: Call) -> dict[str, str]:
        return {"status": "ok", "service": self.service}

    def __call__(self, request: flask.Request) -> flask.Response:
        started = time.perf_counter()
        try:
            trace = context.from_headers(self.trace_source(request))
        except Exception:  # tracing must never fail a request
            log.exception("trace source failed; starting a new trace")
            trace = context.from_headers({})
        # The server span is named after the route template once one matches (low
        # cardinality); unroutable requests keep the bare method.
        with tracing.server_span(request.method, trace, **{
                "http.request.method": request.method, "url.path": request.path}) as span:
            try:
                response = self._dispatch(request, trace)
            except errors.AppError as exc:
                response = _problem_response(exc, trace, request.path)
            except Exception as exc:
                log.exception("unhandled error in %s %s", request.method, request.path)
                span.record_exception(exc)
                response = _problem_response(_database_unavailable(exc) or errors.AppError(),
                                             trace, request.path)
            span.set(**{"http.response.status_code": response.status_code})
            if response.status_code >= 500:  # 4xx are the caller's errors, not the server's
                span.error(f"HTTP {response.status_code}")
            response.headers["X-Trace-Id"] = trace.trace_id
            response.headers["X-Request-Id"] = trace.request_id
            response.headers["traceparent"] = trace.traceparent
            _access_log(request, response, time.perf_counter() - started)
        lazy.freeze_after_imports()
        return response

    def _dispatch(self, request: flask.Request, trace: context.TraceContext) -> flask.Response:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise errors.PayloadTooLarge(f"body exceeds {self.max_body_bytes} bytes")
        path = request.path.rstrip("/") or "/"
        if any("\x00" in value for value in request.args.values()):
            raise errors.BadRequest("query has a NUL character", code="invalid_query")
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(path)
            if not match:
                continue
            if route.method != request.method and not (
                route.method == "GET" and request.method == "HEAD"
            ):
                allowed.append(route.method)
                continue
            if (span := tracing.current_span()) is not None:
                span.name = f"{route.method} {route.path}"
                span.set(**{"http.route": route.path})
            principal = self.authenticate(request) if route.role and self.authenticate else None
            limit_headers = self._take_rate_limit(request, route, principal)
            if route.role is not None:
                _require_role(principal, route.role)
            body = _read_body(request, route.body, self.max_body_bytes) if route.body else None
            call = Call(request, match.groupdict(), body, trace, principal)
            response = _to_response(route.handler(call))
            response.headers.update(limit_headers)
            return response
        if allowed:
            raise errors.MethodNotAllowed(
                f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)}
            )
        raise errors.NotFound(f"no route for {request.method} {path}")


    def _take_rate_limit(self, request: flask.Request, route: Route, principal: Any
                         ) -> dict[str, str]:
        """One atomic decision per request (health checks are never limited)."""
        if self.rate_limit is None or route.handler == self._health:
            return {}
        from shared import db, ratelimit

        caller = ratelimit.caller_key(getattr(principal, "subject", None),
                                      request.headers.get("X-Forwarded-For"), request.remote_addr)
        with db.autocommit_engine().connect() as conn:
            decision = ratelimit.take(conn, self.rate_limit, caller)
        headers = ratelimit.headers(decision)
        if not decision.allowed:
            raise errors.TooManyRequests("rate limit exceeded; slow down", headers=headers)
        return headers


def _limit_from_env() -> Any:
    import os

    from shared import ratelimit

    return ratelimit.limit_from_env(os.environ)


def _request_headers(request: flask.Request) -> Mapping[str, str]:
    return dict(request.headers.items())


def _require_role(principal: Any, role: str) -> None:
    roles = set(getattr(principal, "roles", ()) or ())
    if role not in roles and "admin" not in roles:
        raise errors.Forbidden(f"this route needs the {role} role", code="missing_role",
                               headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})


def _read_body(request: flask.Request, schema: Schema, limit: int) -> dict[str, Any]:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise errors.UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=True)
    if len(raw) > limit:  # chunked bodies carry no Content-Length
        raise errors.PayloadTooLarge(f"body exceeds {limit} bytes")
    return schema.validate(parse_json(raw))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  mimetype: str = "application/json") -> flask.Response:
    payload = json.dumps(body, separators=(",", ":"), default=str, ensure_ascii=False)
    return flask.Response(payload, status=status, headers=headers, mimetype=mimetype)


def _to_response(result: Any) -> flask.Response:
    if isinstance(result, flask.Response):
        return result
    if isinstance(result, tuple):
        body, status, *rest = result
        return json_response(body, status, rest[0] if rest else None)
    if result is None:
        return flask.Response(status=204)
    return json_response(result)


class DatabaseUnavailable(errors.ServiceUnavailable):
    code, title = "database_unavailable", "The database is unavailable"


def _database_unavailable(exc: Exception) -> errors.AppError | None:
    """503 with Retry-After for what a retry can cure: the database unreachable, restarting or
    at its connection limit, a deadlock or serialization failure, a statement cancelled, or no
    pooled connection free in time (SQLAlchemy's OperationalError and pool TimeoutError).
    Clients and Pub/Sub retry a 503; a 500 says the request itself broke something."""
    if not type(exc).__module__.startswith("sqlalchemy"):
        return None  # sqlalchemy is not imported here unless it raised
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.OperationalError | sa.TimeoutError):
        return DatabaseUnavailable("the database did not answer; try again shortly",
                                   headers={"Retry-After": "1"})
    return None


def _problem_response(exc: errors.AppError, trace: context.TraceContext, path: str
                      ) -> flask.Response:
    body = errors.problem(exc, trace.trace_id, path)
    return json_response(body, exc.status, dict(exc.headers), mimetype=errors.PROBLEM_JSON)


def _access_log(request: flask.Request, response: flask.Response, latency: float) -> None:
    status = response.status_code
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    log.log(
        level,
        "%s %s %d",
        request.method,
        request.path,
        status,
        extra={
            "httpRequest": {
                "requestMethod": request.method,
                "requestUrl": request.path,  # no query string: it may carry secrets
                "status": status,
                "latency": f"{latency:.6f}s",
                "userAgent": request.headers.get("User-Agent", ""),
                "remoteIp": request.headers.get("X-Forwarded-For", request.remote_addr or ""),
                "responseSize": str(response.calculate_content_length() or 0),
            }
        },
    )
