"""Calls to Gemini through google-genai (Vertex AI mode) with the resilience a chat turn needs.

- A timeout per attempt; at most two retries, on 429, 5xx, timeouts and malformed replies
  only, with exponential backoff and full jitter. A streamed call is retried only before its
  first delta reached the caller (after that a retry would repeat text).
- A circuit breaker shared by all instances (a row per model in PostgreSQL): after
  BREAKER_THRESHOLD consecutive failed calls the model is not called for BREAKER_COOLDOWN_S
  (`GENAI_BREAKER_COOLDOWN_S`);
  callers get a clear 503 with Retry-After instead of waiting on a failing model. The first call
  after the cool-down is the probe: success closes the breaker, failure opens it again. An
  instance that found the breaker clean trusts that for a second before reading it again.
- Per-character safety settings (strict / standard / relaxed).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shared import errors, tracing
from shared.config import get_settings

log = logging.getLogger("shared.gemini")

MAX_RETRIES = 2
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 4.0
BREAKER_THRESHOLD = 5
BREAKER_COOLDOWN_S = 30
DEFAULT_TIMEOUT_S = 30.0
_THRESHOLDS = {"strict": "BLOCK_LOW_AND_ABOVE", "standard": "BLOCK_MEDIUM_AND_ABOVE",
               "relaxed": "BLOCK_ONLY_HIGH"}
_CATEGORIES = ("HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH",
               "HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_DANGEROUS_CONTENT")
T = TypeVar("T")


class ModelUnavailable(errors.ServiceUnavailable):
    code = "model_unavailable"
    title = "The model is unavailable"


class ModelRejected(errors.AppError):
    """The model refused the request itself (not a transient failure): never retried."""

    status, code, title = 502, "model_rejected", "The model rejected the request"


class SafetyBlocked(errors.AppError):
    status, code, title = 422, "blocked_by_safety", "Blocked by the safety settings"


_BLOCKED = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}


def _require_text(response: Any) -> str:
    """The reply text; a safety block is the user's answer, an empty reply is a fault."""
    if response.text:
        return str(response.text)
    feedback = getattr(response, "prompt_feedback", None)
    candidates = getattr(response, "candidates", None) or []
    reason = str(getattr(candidates[0], "finish_reason", "") or "") if candidates else ""
    if (feedback is not None and getattr(feedback, "block_reason", None)) or \
            reason.rsplit(".", 1)[-1] in _BLOCKED:
        raise SafetyBlocked("the reply was blocked by this character's safety settings")
    raise ValueError("the model returned no text")


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int
    output_tokens: int
    model: str
    attempts: int


class Retryable(Exception):
    """A failure worth another attempt (and counted by the breaker)."""


def safety_settings(level: str) -> list[Any]:
    from google.genai import types

    threshold = _THRESHOLDS.get(level, _THRESHOLDS["standard"])
    return [types.SafetySetting(category=c, threshold=threshold)  # type: ignore[arg-type]
            for c in _CATEGORIES]


def _config(system_instruction: str, contents: Sequence[dict[str, Any]], safety_level: str,
            max_output_tokens: int | None) -> Any:
    from google.genai import types

    timeout_ms = int(float(os.environ.get("GENAI_TIMEOUT_S", DEFAULT_TIMEOUT_S)) * 1000)
    return types.GenerateContentConfig(
        system_instruction=system_instruction,
        safety_settings=safety_settings(safety_level),
        max_output_tokens=max_output_tokens,
        # Our own retries below; the SDK's would multiply them.
        http_options=types.HttpOptions(timeout=timeout_ms,
                                       retry_options=types.HttpRetryOptions(attempts=1),
                                       extra_body={"contents": list(contents)}),
    )


def _sdk_contents(contents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What goes through the SDK's `contents` argument: only the newest message.

    The whole history travels in `HttpOptions.extra_body` (see `_config`), which the SDK writes
    over the request body it built (documented: "the structure must match the backend API's
    request structure"; google-genai 1.21 to 3.x replace a key given there). The SDK validates
    and converts contents field by field through pydantic, ~0.1 ms of CPU per message on every
    turn (a whole call measured alone: 8.8 ms at 80 messages through `contents`, 0.8 ms with
    them here), while the prompt builder already makes them in the REST shape
    (`{"role", "parts": [{"text"}]}`). The newest message still goes through the SDK, so the
    call reads as what it is; an SDK that stopped honouring the override would send a
    one-message prompt, which a test in tests/integration/test_gemini.py catches. Decision 011."""
    if not contents:
        raise ValueError("a model call needs at least one message")
    return list(contents[-1:])


def _classify(exc: Exception) -> Exception:
    """Retryable for transient failures; the original exception otherwise."""
    from google.genai import errors as genai_errors

    if isinstance(exc, genai_errors.APIError):
        if exc.code == 429 or (exc.code or 0) >= 500:
            return Retryable(f"model answered {exc.code}")
        return ModelRejected(f"the model answered {exc.code}")
    if isinstance(exc, TimeoutError | ValueError | ConnectionError) or \
            "timeout" in type(exc).__name__.lower() or "connect" in type(exc).__name__.lower():
        return Retryable(f"{type(exc).__name__}")
    return exc


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))


def _with_retries(model: str, call: Callable[[], T]) -> tuple[T, int]:
    needs_reset = check_breaker(model)
    last: Exception | None = None
    for attempt in range(MAX_RETRIES + 1):
        if attempt:
            time.sleep(_backoff(attempt - 1))
        try:
            result = call()
        except Exception as exc:
            classified = _classify(exc)
            if classified is exc:
                raise
            if not isinstance(classified, Retryable):
                raise classified from exc
            last = classified
            log.warning("model call attempt %d failed: %s", attempt + 1, classified)
            continue
        if needs_reset:
            record_outcome(model, ok=True)
        return result, attempt + 1
    record_outcome(model, ok=False)
    raise ModelUnavailable("the model did not answer; try again shortly",
                           headers={"Retry-After": "5"}) from last


def _usage(response: Any) -> tuple[int, int]:
    usage = getattr(response, "usage_metadata", None)
    return (int(getattr(usage, "prompt_token_count", 0) or 0),
            int(getattr(usage, "candidates_token_count", 0) or 0))


def generate(system_instruction: str, contents: Sequence[dict[str, Any]],
             safety_level: str = "standard", max_output_tokens: int | None = None) -> Reply:
    """One complete reply."""
    from shared.clients import genai_client

    model = get_settings().genai_model
    newest = _sdk_contents(contents)
    config = _config(system_instruction, contents, safety_level, max_output_tokens)

    def call() -> Any:
        response = genai_client().models.generate_content(model=model, contents=newest,
                                                          config=config)
        return response, _require_text(response)

    with tracing.span(f"chat {model}", "client", **_span_attributes(model)) as span:
        (response, text), attempts = _with_retries(model, call)
        reply = Reply(text, *_usage(response), model, attempts)
        _finish_span(span, reply)
    return reply


def _span_attributes(model: str) -> dict[str, Any]:
    """OpenTelemetry's generative-AI conventions for a model call."""
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.vertex_ai",
            "gen_ai.request.model": model}


def _finish_span(span: tracing.Span, reply: Reply) -> None:
    span.set(**{"gen_ai.response.model": reply.model,
                "gen_ai.usage.input_tokens": reply.input_tokens,
                "gen_ai.usage.output_tokens": reply.output_tokens,
                "app.model.attempts": reply.attempts})


def stream(system_instruction: str, contents: Sequence[dict[str, Any]],
           safety_level: str = "standard", max_output_tokens: int | None = None
           ) -> Iterator[str | Reply]:
    """Text deltas as they arrive, then the complete Reply as the last item."""
    from shared.clients import genai_client

    model = get_settings().genai_model
    newest = _sdk_contents(contents)
    config = _config(system_instruction, contents, safety_level, max_output_tokens)

    def first_chunk() -> tuple[Iterator[Any], Any]:
        chunks = iter(genai_client().models.generate_content_stream(
            model=model, contents=newest, config=config))
        return chunks, next(chunks)

    span = tracing.start_span(f"chat {model}", "client", stream=True, **_span_attributes(model))
    try:
        reply = yield from _stream_reply(model, first_chunk)
    except BaseException as exc:
        tracing.end_span(span, exc)
        raise
    _finish_span(span, reply)
    tracing.end_span(span)


def _stream_reply(model: str, first_chunk: Callable[[], tuple[Iterator[Any], Any]]
                  ) -> Generator[str | Reply, None, Reply]:
    (chunks, chunk), attempts = _with_retries(model, first_chunk)
    parts: list[str] = []
    tokens = (0, 0)
    last = chunk
    try:
        while chunk is not None:
            last = chunk
            if chunk.text:
                parts.append(chunk.text)
                yield chunk.text
            if getattr(chunk, "usage_metadata", None) is not None:
                tokens = _usage(chunk)
            chunk = next(chunks, None)
    except Exception as exc:
        # Mid-stream failure: no retry (the caller already has part of the text).
        record_outcome(model, ok=False)
        raise ModelUnavailable("the model stopped mid-reply; try again",
                               headers={"Retry-After": "5"}) from exc
    if not parts:
        # Nothing streamed: a safety block is the user's answer (422), anything else a fault;
        # either way no empty reply is stored.
        try:
            _require_text(last)
        except ValueError:
            record_outcome(model, ok=False)
            raise ModelUnavailable("the model returned an empty reply; try again",
                                   headers={"Retry-After": "5"}) from None
    reply = Reply("".join(parts), tokens[0], tokens[1], model, attempts)
    yield reply
    return reply


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


# A breaker this instance found closed with nothing counted is trusted for this long without
# reading it again: a healthy model costs one read per second per instance, not one per call.
# Another instance's failures reach this one at most that late; this instance's own failures
# forget the trust at once.
BREAKER_TRUST_S = 1.0
_trusted_until: dict[str, float] = {}


def check_breaker(model: str) -> bool:
    """503 with Retry-After while the model's breaker is open. Returns whether the breaker has
    anything for a success to reset (failures counted, or a cool-down that has passed), so the
    common case, a healthy model, costs no write (and at most one read a second)."""
    from shared import db

    if time.monotonic() < _trusted_until.get(model, 0.0):
        return False
    with db.autocommit_engine().connect() as conn:
        row = conn.execute(_sql(
            "SELECT consecutive_failures, open_until IS NOT NULL, "
            "ceil(extract(epoch FROM open_until - now())) FROM model_breakers "
            "WHERE model = :m"), {"m": model}).first()
    if row is None or (not row[0] and not row[1]):
        _trusted_until[model] = time.monotonic() + BREAKER_TRUST_S
        return False
    failures, has_open_until, remaining = row
    if remaining is not None and remaining > 0:
        raise ModelUnavailable("the model is failing; calls are paused",
                               code="model_circuit_open",
                               headers={"Retry-After": str(max(1, int(remaining)))})
    return bool(failures) or bool(has_open_until)


def record_outcome(model: str, ok: bool) -> None:
    """One atomic statement per call outcome: success closes, failures count and open."""
    from shared import db

    if not ok:
        _trusted_until.pop(model, None)
    with db.autocommit_engine().connect() as conn:
        if ok:
            conn.execute(_sql(
                "INSERT INTO model_breakers (model) VALUES (:m) ON CONFLICT (model) DO UPDATE "
                "SET consecutive_failures = 0, open_until = NULL, updated_at = now() "
                "WHERE model_breakers.consecutive_failures > 0 "
                "OR model_breakers.open_until IS NOT NULL"), {"m": model})
            return
        conn.execute(_sql(
            "INSERT INTO model_breakers AS b (model, consecutive_failures) VALUES (:m, 1) "
            "ON CONFLICT (model) DO UPDATE SET consecutive_failures = b.consecutive_failures + 1,"
            " open_until = CASE WHEN b.consecutive_failures + 1 >= :threshold "
            "THEN now() + make_interval(secs => :cooldown) ELSE b.open_until END, "
            "updated_at = now()"),
            {"m": model, "threshold": BREAKER_THRESHOLD,
             "cooldown": float(os.environ.get("GENAI_BREAKER_COOLDOWN_S", BREAKER_COOLDOWN_S))})
