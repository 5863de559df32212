"""Config, masking, trace parsing, envelopes, cursors, backoff and cron: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from emulators.bridge import backoff_seconds
from emulators.scheduler import next_fire
from infra.topology import RetryPolicy, Schedule, Subscription
from shared import context, errors
from shared.config import ConfigError, load_settings
from shared.events import Envelope, EnvelopeError
from shared.logs import MASK, mask, mask_text
from shared.pagination import decode_cursor, encode_cursor


def test_local_settings_have_safe_defaults() -> None:
    settings = load_settings({"APP_ENV": "local"})
    assert settings.project == "local-project" and not settings.is_production


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_ENV": "prod"}, "GOOGLE_CLOUD_PROJECT"),
        ({"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p", "CURSOR_SECRET": "short"},
         "CURSOR_SECRET"),
        ({"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p", "CURSOR_SECRET": "changeme"},
         "CURSOR_SECRET"),
        ({"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p", "CURSOR_SECRET": "x" * 40,
          "DATABASE_URL": "postgresql://u:p@h/db"}, "INSTANCE_CONNECTION_NAME"),
        ({"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p", "CURSOR_SECRET": "x" * 40,
          "GENAI_BASE_URL": "http://127.0.0.1:1"}, "emulator"),
    ],
)
def test_production_fails_fast_on_bad_config(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_cursor_secret_is_required_only_where_pagination_is_used() -> None:
    settings = load_settings({"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p"})
    with pytest.raises(ConfigError, match="CURSOR_SECRET"):
        settings.require_cursor_secret()
    assert load_settings({"APP_ENV": "local"}).require_cursor_secret()


def test_production_config_with_real_values_loads() -> None:
    settings = load_settings({"APP_ENV": "prod", "GOOGLE_CLOUD_PROJECT": "p",
                              "CURSOR_SECRET": "q" * 40, "INSTANCE_CONNECTION_NAME": "p:r:i"})
    assert settings.is_production and settings.has_database


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("login with password=hunter2&user=x", "hunter2"),
        ('{"refresh_token": "r-123456"}', "r-123456"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature here", "sig_nature"),
        ("api_key: AKIA12345", "AKIA12345"),
        ("Cookie: session=abcdef", "abcdef"),
    ],
)
def test_secret_shaped_text_is_masked(text: str, secret: str) -> None:
    assert secret not in mask_text(text)


def test_counts_under_secret_like_names_stay_readable_but_numeric_secrets_do_not() -> None:
    assert mask({"totalTokenCount": 42, "max_output_tokens": 256, "token_refreshed": True}) == {
        "totalTokenCount": 42, "max_output_tokens": 256, "token_refreshed": True}
    assert mask({"password": 123456, "pin_token": 9}) == {"password": MASK, "pin_token": MASK}


def test_secret_fields_are_masked_recursively() -> None:
    masked = mask({"user": "ann", "Password": "p", "nested": {"client_secret": "s",
                   "list": [{"accessToken": "t"}]}, "count": 3})
    assert masked == {"user": "ann", "Password": MASK, "nested": {"client_secret": MASK,
                      "list": [{"accessToken": MASK}]}, "count": 3}


def test_traceparent_is_continued_and_child_spans_change() -> None:
    ctx = context.from_headers({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                               "00f067aa0ba902b7-00"})
    assert ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx.parent_span_id == "00f067aa0ba902b7" and ctx.sampled is False
    assert ctx.traceparent.endswith("-00")
    child = ctx.child()
    assert child.trace_id == ctx.trace_id and child.parent_span_id == ctx.span_id


@pytest.mark.parametrize("value", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "garbage",
])
def test_invalid_traceparent_starts_a_new_trace(value: str) -> None:
    ctx = context.from_headers({"traceparent": value})
    assert ctx.trace_id not in value and ctx.parent_span_id is None


def test_cloud_trace_context_span_is_converted_to_hex() -> None:
    ctx = context.from_headers({"X-Cloud-Trace-Context":
                                "105445aa7843bc8bf206b12000100000/255;o=1"})
    assert ctx.trace_id == "105445aa7843bc8bf206b12000100000"
    assert ctx.parent_span_id == "00000000000000ff" and ctx.sampled


def test_envelope_round_trip_and_rejections() -> None:
    env = Envelope("user.deleted", {"user_id": "u1"})
    assert Envelope.from_json(env.to_json()) == env
    for raw in (b"nope", b"[]", b'{"id": "1", "type": "t"}',
                b'{"id":"1","type":"t","occurred_at":"x","data":[]}',
                b'{"id":"1","type":"t","occurred_at":"x","data":{},"schema":"1"}'):
        with pytest.raises(EnvelopeError):
            Envelope.from_json(raw)


def test_cursor_round_trip_and_tamper_evidence() -> None:
    cursor = encode_cursor({"after": 10, "ts": "2026-01-01"}, "k1")
    assert decode_cursor(cursor, "k1") == {"after": 10, "ts": "2026-01-01"}
    for bad in (cursor + "x", cursor.replace(cursor[2], "A" if cursor[2] != "A" else "B", 1),
                "", ".", "abc"):
        with pytest.raises(errors.BadRequest):
            decode_cursor(bad, "k1")
    with pytest.raises(errors.BadRequest):
        decode_cursor(cursor, "another-key")


def test_backoff_doubles_up_to_the_maximum_then_scales() -> None:
    sub = Subscription("s", "t", "f", retry=RetryPolicy(10, 60))
    assert [backoff_seconds(sub, n, 1.0) for n in range(1, 6)] == [10, 20, 40, 60, 60]
    assert backoff_seconds(sub, 1, 0.01) == pytest.approx(0.1)


def test_next_fire_respects_the_schedule_time_zone() -> None:
    schedule = Schedule("morning", cron="0 9 * * *", topic="t", time_zone="Asia/Seoul")
    after = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)  # 10:00 in Seoul
    assert next_fire(schedule, after) == datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    ny = Schedule("ny", cron="30 2 * * *", topic="t", time_zone="America/New_York")
    # 2026-03-08: New York springs forward, there is no 02:30; croniter moves to the next valid.
    fire = next_fire(ny, datetime(2026, 3, 8, 5, 0, tzinfo=UTC))
    assert fire > datetime(2026, 3, 8, 5, 0, tzinfo=UTC)


def test_engine_uses_the_cloud_sql_connector_when_configured(monkeypatch) -> None:
    from shared import clients, db

    monkeypatch.setenv("INSTANCE_CONNECTION_NAME", "proj:us-central1:main")
    monkeypatch.setenv("DB_IAM_USER", "fn-sa@proj.iam")
    clients.reset()
    engine = db.engine()  # builds no connector and opens no connection yet
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.url.host is None  # connections come from the connector's creator
    assert db.engine() is engine


def test_engine_without_a_database_is_a_clear_config_error() -> None:
    from shared import clients, db

    clients.reset()
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        db.engine()


class _Chunk:
    def __init__(self, text=None, finish_reason=None, block_reason=None) -> None:
        self.text = text
        self.usage_metadata = None
        self.candidates = [type("C", (), {"finish_reason": finish_reason})()] \
            if finish_reason else []
        self.prompt_feedback = type("F", (), {"block_reason": block_reason})() \
            if block_reason else None


class _FakeModels:
    def __init__(self, chunks) -> None:
        self.chunks = chunks

    def generate_content_stream(self, **_kwargs):
        return iter(self.chunks)


@pytest.mark.parametrize(("chunks", "expected"), [
    ([_Chunk(finish_reason="SAFETY")], "SafetyBlocked"),
    ([_Chunk(block_reason="PROHIBITED_CONTENT")], "SafetyBlocked"),
    ([_Chunk(text=None)], "ModelUnavailable"),
])
def test_stream_never_yields_an_empty_reply(monkeypatch, chunks, expected: str) -> None:
    """A fake at our own boundary (the client getter), not a mock of google-genai's HTTP."""
    from shared import clients, gemini

    with monkeypatch.context() as patch:  # undone before the fixtures reset the clients
        patch.setattr(clients, "genai_client",
                      lambda: type("Client", (), {"models": _FakeModels(chunks)})())
        patch.setattr(gemini, "check_breaker", lambda model: None)
        patch.setattr(gemini, "record_outcome", lambda model, ok: None)
        patch.setattr(gemini, "_config", lambda *args: None)
        with pytest.raises(getattr(gemini, expected)):
            list(gemini.stream("system", [{"role": "user", "parts": [{"text": "hi"}]}]))
