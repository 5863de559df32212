"""Gemini calls against the Vertex AI stand-in through the real google-genai client: retries
with backoff on 429/5xx/slow/malformed, a clean 503 when they run out, and a circuit breaker
shared through PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulators.vertex_standin import VertexStandin
from shared import clients, gemini

SYSTEM = "You are Mina, a cheerful barista."
CONTENTS = [{"role": "user", "parts": [{"text": "one latte please"}]}]


@pytest.fixture
def standin(platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[VertexStandin]:
    server = VertexStandin(slow_s=2.0).start()
    monkeypatch.setenv("GENAI_BASE_URL", server.url)
    monkeypatch.setenv("GENAI_TIMEOUT_S", "0.5")
    monkeypatch.setattr(gemini, "BACKOFF_BASE_S", 0.01)  # keep retries quick in tests
    monkeypatch.setattr(gemini, "_trusted_until", {})  # every test reads its own database
    clients.reset()
    try:
        yield server
    finally:
        server.stop()


def _calls(server: VertexStandin) -> int:
    return len(server.requests)


def test_generate_returns_text_and_usage(standin: VertexStandin) -> None:
    reply = gemini.generate(SYSTEM, CONTENTS)
    assert reply.text == f"[{SYSTEM[:40]}] echo: one latte please"
    assert reply.input_tokens > 0 and reply.output_tokens > 0 and reply.attempts == 1
    body = standin.requests[-1]["body"]
    assert {s["threshold"] for s in body["safetySettings"]} == {"BLOCK_MEDIUM_AND_ABOVE"}


@pytest.mark.parametrize("fault", ["429", "500", "slow", "malformed"])
def test_transient_faults_are_retried(standin: VertexStandin, fault: str) -> None:
    standin.inject(fault, count=2)
    reply = gemini.generate(SYSTEM, CONTENTS)
    assert reply.attempts == 3 and reply.text.endswith("one latte please")
    assert _calls(standin) == 3


def test_exhausted_retries_are_a_clean_503(standin: VertexStandin) -> None:
    standin.inject("500", count=3)
    with pytest.raises(gemini.ModelUnavailable) as caught:
        gemini.generate(SYSTEM, CONTENTS)
    assert caught.value.status == 503 and caught.value.headers["Retry-After"]
    assert _calls(standin) == 3  # at most two retries


def test_breaker_opens_after_consecutive_failures_and_closes_on_success(
        standin: VertexStandin, platform_env: dict[str, str]) -> None:
    import sqlalchemy

    standin.inject("500", count=3 * gemini.BREAKER_THRESHOLD)
    for _ in range(gemini.BREAKER_THRESHOLD):
        with pytest.raises(gemini.ModelUnavailable):
            gemini.generate(SYSTEM, CONTENTS)
    calls = _calls(standin)
    with pytest.raises(gemini.ModelUnavailable) as caught:
        gemini.generate(SYSTEM, CONTENTS)
    assert caught.value.code == "model_circuit_open"
    assert int(caught.value.headers["Retry-After"]) >= 1
    assert _calls(standin) == calls  # the failing model was not called
    standin.reset()
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    with engine.begin() as conn:  # the cool-down passes
        conn.execute(sqlalchemy.text("UPDATE model_breakers SET open_until = now()"))
    engine.dispose()
    assert gemini.generate(SYSTEM, CONTENTS).attempts == 1  # the probe succeeds and closes it
    gemini.generate(SYSTEM, CONTENTS)


def test_a_clean_breaker_is_trusted_for_a_second_then_read_again(
        standin: VertexStandin, platform_env: dict[str, str]) -> None:
    import sqlalchemy

    gemini.generate(SYSTEM, CONTENTS)  # reads the breaker: clean, so trusted for a second
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    with engine.begin() as conn:  # another instance's failures open it meanwhile
        conn.execute(sqlalchemy.text(
            "INSERT INTO model_breakers (model, consecutive_failures, open_until) "
            "VALUES (:m, 5, now() + interval '30 seconds') ON CONFLICT (model) DO UPDATE "
            "SET consecutive_failures = 5, open_until = now() + interval '30 seconds'"),
            {"m": gemini.get_settings().genai_model})
    engine.dispose()
    calls = _calls(standin)
    assert gemini.generate(SYSTEM, CONTENTS).attempts == 1  # within the second: not read
    assert _calls(standin) == calls + 1
    gemini._trusted_until.clear()  # the second has passed
    with pytest.raises(gemini.ModelUnavailable) as caught:
        gemini.generate(SYSTEM, CONTENTS)
    assert caught.value.code == "model_circuit_open"
    assert _calls(standin) == calls + 1  # the open breaker stopped the call


def test_stream_yields_deltas_then_the_reply(standin: VertexStandin) -> None:
    standin.inject("429", count=1)  # before the first delta: retried
    items = list(gemini.stream(SYSTEM, CONTENTS, safety_level="strict"))
    *deltas, reply = items
    assert isinstance(reply, gemini.Reply) and len(deltas) > 1
    assert "".join(d for d in deltas if isinstance(d, str)) == reply.text
    assert reply.attempts == 2 and reply.output_tokens > 0
    body = standin.requests[-1]["body"]
    assert {s["threshold"] for s in body["safetySettings"]} == {"BLOCK_LOW_AND_ABOVE"}


HISTORY = [{"role": "user", "parts": [{"text": "[Note] The user is Sam."}]},
           {"role": "model", "parts": [{"text": "Welcome in!"}]},
           {"role": "user", "parts": [{"text": "one latte please"}]},
           {"role": "model", "parts": [{"text": "Coming right up."}]},
           {"role": "user", "parts": [{"text": "and a croissant"}]}]


@pytest.mark.parametrize("streamed", [False, True])
def test_the_model_receives_the_whole_history_on_every_attempt(
        standin: VertexStandin, streamed: bool) -> None:
    """The history travels in extra_body, written over the SDK's one-message contents: the
    installed google-genai must still send all of it, exactly as built, retries included."""
    standin.inject("500", count=1)
    if streamed:
        *_, reply = list(gemini.stream(SYSTEM, HISTORY))
    else:
        reply = gemini.generate(SYSTEM, HISTORY)
    assert isinstance(reply, gemini.Reply) and reply.attempts == 2
    assert reply.text.endswith("echo: and a croissant")
    assert [r["body"]["contents"] for r in standin.requests] == [HISTORY, HISTORY]
    body = standin.requests[-1]["body"]
    assert body["systemInstruction"]["parts"][0]["text"] == SYSTEM
    assert len(body["safetySettings"]) == 4


def test_a_call_without_messages_is_refused_before_the_model(standin: VertexStandin) -> None:
    with pytest.raises(ValueError, match="at least one message"):
        gemini.generate(SYSTEM, [])
    assert _calls(standin) == 0
