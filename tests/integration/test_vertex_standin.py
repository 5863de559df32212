"""The Vertex stand-in, driven by the real google-genai client (Vertex mode) with no mocks.

If these pass, code that talks to Gemini through google-genai can run against the local cloud and
its error paths (429 / 500 / timeouts / garbage responses) can be tested deterministically.
"""

from __future__ import annotations

import http.client
import importlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import google.oauth2.credentials
import pytest
from google import genai
from google.genai import errors, types

# Plain `pytest` (no conftest / rootdir config) does not put the repo root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emulators.vertex_standin import REQUEST_LOG_SIZE, VertexStandin

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "gemini-2.0-flash"
SYSTEM = "You are a terse pirate captain who speaks only of maps and treasure."
PROMPT = "Where did you bury the gold that we found on the island last spring?"
EXPECTED = f"[{SYSTEM[:40]}] echo: {PROMPT}"

ClientFactory = Callable[..., genai.Client]


@pytest.fixture
def standin() -> Iterator[VertexStandin]:
    """A fresh in-process stand-in per test, so fault queues and request logs never leak."""
    server = VertexStandin(slow_s=0.2).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_client(standin: VertexStandin, monkeypatch: pytest.MonkeyPatch) -> ClientFactory:
    """Vertex-mode clients (project + location + credentials) aimed at the stand-in, retries off."""
    monkeypatch.delenv("GOOGLE_GENAI_API_VERSION", raising=False)

    def build(**http: Any) -> genai.Client:
        options = types.HttpOptions(
            base_url=standin.url,
            retry_options=types.HttpRetryOptions(attempts=1),
            client_args={"trust_env": False},
            **http,
        )
        return genai.Client(
            vertexai=True,
            project="p",
            location="us-central1",
            credentials=google.oauth2.credentials.Credentials(token="local"),  # type: ignore[no-untyped-call]
            http_options=options,
        )

    return build


@pytest.fixture
def client(make_client: ClientFactory) -> genai.Client:
    return make_client()


def _config() -> types.GenerateContentConfig:
    return types.GenerateContentConfig(system_instruction=SYSTEM)


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    """Status and decoded JSON body; plain http.client, so no proxy settings can get in the way."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=5)
    try:
        conn.request(method, parts.path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _timeout_errors() -> tuple[type[BaseException], ...]:
    """google-genai 3.x sends through httpx2 if installed, else httpx; accept either's timeout."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TimeoutException)
        except ImportError:
            continue
    return tuple(found)


def test_generate_content_is_deterministic_and_reports_usage(
    standin: VertexStandin, client: genai.Client
) -> None:
    first = client.models.generate_content(model=MODEL, contents=PROMPT, config=_config())
    again = client.models.generate_content(model=MODEL, contents=PROMPT, config=_config())

    assert first.text == again.text == EXPECTED
    candidate = first.candidates[0] if first.candidates else None
    assert candidate is not None and candidate.content is not None
    assert candidate.content.role == "model"
    assert candidate.finish_reason == types.FinishReason.STOP
    assert first.model_version == MODEL
    usage = first.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == math.ceil(len(SYSTEM + PROMPT) / 4)
    assert usage.candidates_token_count == math.ceil(len(EXPECTED) / 4)
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    sent = standin.requests[-1]
    assert sent["path"] == (
        f"/v1beta1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
    )
    assert sent["body"]["systemInstruction"]["parts"] == [{"text": SYSTEM}]


def test_reply_echoes_last_user_turn_and_defaults_persona(client: genai.Client) -> None:
    history = [
        types.Content(role="user", parts=[types.Part(text="first question")]),
        types.Content(role="model", parts=[types.Part(text="first answer")]),
        types.Content(role="user", parts=[types.Part(text="second question")]),
    ]
    reply = client.models.generate_content(model=MODEL, contents=history)
    assert reply.text == "[assistant] echo: second question"


def test_stream_chunks_join_to_the_non_streamed_reply(client: genai.Client) -> None:
    whole = client.models.generate_content(model=MODEL, contents=PROMPT, config=_config())
    chunks = list(
        client.models.generate_content_stream(model=MODEL, contents=PROMPT, config=_config())
    )

    assert len(chunks) > 1
    assert "".join(chunk.text or "" for chunk in chunks) == whole.text == EXPECTED
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata == whole.usage_metadata
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])


def test_count_tokens_and_api_version_override(
    standin: VertexStandin, make_client: ClientFactory
) -> None:
    client = make_client(api_version="v1")
    counted = client.models.count_tokens(model=MODEL, contents=PROMPT)
    assert counted.total_tokens == math.ceil(len(PROMPT) / 4)
    assert standin.requests[-1]["path"].startswith("/v1/projects/p/locations/us-central1/")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [("429", errors.ClientError, "RESOURCE_EXHAUSTED"), ("500", errors.ServerError, "INTERNAL")],
)
def test_http_faults_surface_as_genai_errors_once(
    standin: VertexStandin,
    client: genai.Client,
    fault: str,
    error: type[errors.APIError],
    status: str,
    stream: bool,
) -> None:
    def call() -> str:
        if stream:
            return "".join(
                c.text or ""
                for c in client.models.generate_content_stream(model=MODEL, contents="hi")
            )
        return client.models.generate_content(model=MODEL, contents="hi").text or ""

    standin.inject(fault, count=2)
    for _ in range(2):
        with pytest.raises(error) as info:
            call()
        assert (info.value.code, info.value.status) == (int(fault), status)
    assert call() == "[assistant] echo: hi"  # faults are consumed, then service resumes


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_malformed_reply_raises_instead_of_hanging(
    standin: VertexStandin, client: genai.Client, stream: bool
) -> None:
    standin.inject("malformed")
    # Unary: json.JSONDecodeError; streaming: errors.UnknownApiResponseError. Both are ValueErrors.
    with pytest.raises(ValueError, match=r"JSON|Expecting"):
        if stream:
            list(client.models.generate_content_stream(model=MODEL, contents="hi"))
        else:
            client.models.generate_content(model=MODEL, contents="hi")
    assert client.models.generate_content(model=MODEL, contents="hi").text == "[assistant] echo: hi"


def test_slow_fault_trips_the_client_timeout(
    standin: VertexStandin, make_client: ClientFactory
) -> None:
    standin.slow_s = 2.0
    standin.inject("slow")
    client = make_client(timeout=150)
    started = time.monotonic()
    with pytest.raises(_timeout_errors()):
        client.models.generate_content(model=MODEL, contents="hi")
    assert time.monotonic() - started < 1.5


def test_slow_fault_and_latency_delay_but_still_answer(
    standin: VertexStandin, client: genai.Client
) -> None:
    standin.latency_s = 0.05
    standin.inject("slow")  # fixture sets slow_s=0.2
    started = time.monotonic()
    assert client.models.generate_content(model=MODEL, contents="hi").text == "[assistant] echo: hi"
    assert time.monotonic() - started >= 0.25


def test_short_publisher_path_and_bad_requests(standin: VertexStandin) -> None:
    base = f"{standin.url}/v1beta1/publishers/google/models/{MODEL}"
    count_body = json.dumps({"contents": [{"parts": [{"text": "abcd"}]}]}).encode()
    status, body = _http("POST", f"{base}:countTokens", count_body)
    assert (status, body) == (200, {"totalTokens": 1})
    for bad in (b"not json", b"", b"[]", b"{}", b'{"contents": []}', b'{"contents": "text"}'):
        status, body = _http("POST", f"{base}:generateContent", bad)
        assert status == 400, bad
        assert body["error"]["status"] == "INVALID_ARGUMENT"
    status, body = _http("POST", f"{standin.url}/v1beta1/models/{MODEL}:embedContent", b"{}")
    assert (status, body["error"]["status"]) == (404, "NOT_FOUND")


def test_http_control_endpoints(standin: VertexStandin, client: genai.Client) -> None:
    control = f"{standin.url}/__standin"
    assert _http("GET", f"{control}/health") == (200, {"status": "ok"})

    assert _http("POST", f"{control}/faults", b'{"fault": "429", "count": 2}') == (
        200,
        {"faults": ["429", "429"]},
    )
    with pytest.raises(errors.ClientError):
        client.models.generate_content(model=MODEL, contents="hi")
    assert _http("DELETE", f"{control}/faults") == (200, {"faults": []})
    assert client.models.generate_content(model=MODEL, contents="hi").text == "[assistant] echo: hi"

    for bad in (
        b'{"fault": "teapot"}',
        b'{"fault": "429", "count": 0}',
        b"nope",
        b'{"fault": "slow", "slow_s": "x"}',
    ):
        status, body = _http("POST", f"{control}/faults", bad)
        assert (status, body["error"]["status"]) == (400, "INVALID_ARGUMENT"), bad

    status, body = _http("GET", f"{control}/requests")
    assert status == 200
    assert [r["body"]["contents"][0]["parts"][0]["text"] for r in body["requests"]] == ["hi", "hi"]
    assert _http("DELETE", f"{control}/requests") == (200, {"requests": []})
    assert standin.requests == []


def test_request_log_keeps_only_the_most_recent(standin: VertexStandin) -> None:
    url = f"{standin.url}/v1beta1/publishers/google/models/{MODEL}:countTokens"
    for i in range(REQUEST_LOG_SIZE + 5):
        _http("POST", url, json.dumps({"contents": [{"parts": [{"text": str(i)}]}]}).encode())
    texts = [r["body"]["contents"][0]["parts"][0]["text"] for r in standin.requests]
    assert texts == [str(i) for i in range(5, REQUEST_LOG_SIZE + 5)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serves_until_signalled(sig: signal.Signals) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.vertex_standin",
            "--port",
            str(port),
            "--latency-ms",
            "5",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        health = f"http://127.0.0.1:{port}/__standin/health"
        deadline = time.monotonic() + 15
        while True:  # poll for readiness rather than guessing a startup delay
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                if _http("GET", health) == (200, {"status": "ok"}):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "stand-in CLI never became healthy"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"listening on http://127.0.0.1:{port}" in out.decode()
