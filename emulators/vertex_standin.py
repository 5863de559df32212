"""Local stand-in for Vertex AI's Gemini REST API, so the real google-genai client runs offline.

Replies are deterministic (persona from the system instruction + echo of the last user message), so
tests can assert exact text and token counts; faults (429 / 500 / slow / malformed) can be queued
in-process or over HTTP, so retry, timeout and error paths are testable against a running stack.
Stdlib only, so importing it costs nothing in processes that never start it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

FAULTS = frozenset({"429", "500", "slow", "malformed"})
REQUEST_LOG_SIZE = 50
WORDS_PER_CHUNK = 3
# google-genai 3.x (Vertex mode, project+location set) posts to
# /{api_version}/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}; the prefix is
# optional so hand-written callers using the short publisher path also work.
_MODEL_PATH = re.compile(
    r"^/v[^/]+/(?:projects/[^/]+/locations/[^/]+/)?publishers/[^/]+/models/(?P<model>[^/:]+)"
    r":(?P<method>generateContent|streamGenerateContent|countTokens)$"
)
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}
JsonDict = dict[str, Any]


class BadRequest(ValueError):
    """A request the real API would reject with 400 INVALID_ARGUMENT."""


def _texts(content: Any) -> list[str]:
    """Text parts of a Content dict (or a bare string), skipping non-text parts."""
    if isinstance(content, str):
        return [content]
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _contents(body: Any) -> list[Any]:
    """The request's `contents`, validated the way Vertex does before it spends any model time."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.")
    contents = body.get("contents") or None  # an empty list counts as missing
    if not isinstance(contents, list) or not all(isinstance(c, dict) for c in contents):
        raise BadRequest("Unable to submit request because it must include at least one content.")
    return contents


def estimate_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer: roughly four characters per token."""
    return math.ceil(len(text) / 4)


def prompt_tokens(body: JsonDict) -> int:
    """Token estimate over every text the caller sent (system instruction plus all turns)."""
    texts = _texts(body.get("systemInstruction")) + [t for c in _contents(body) for t in _texts(c)]
    return estimate_tokens("".join(texts))


def reply_text(body: JsonDict) -> str:
    """The deterministic answer: depends only on the system instruction and the last user turn."""
    persona = "".join(_texts(body.get("systemInstruction")))[:40] or "assistant"
    users = [c for c in _contents(body) if c.get("role", "user") == "user"]
    last = "".join(_texts(users[-1])) if users else ""
    return f"[{persona}] echo: {last}"


def split_deltas(text: str, words: int = WORDS_PER_CHUNK) -> list[str]:
    """Split into ~`words`-word pieces whose concatenation is exactly `text` (whitespace kept)."""
    pieces = [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]
    return ["".join(pieces[i : i + words]) for i in range(0, len(pieces), words)] or [text]


def _candidate(text: str, final: bool) -> JsonDict:
    finish = {"finishReason": "STOP"} if final else {}
    return {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0} | finish


def generate_response(body: JsonDict, model: str) -> JsonDict:
    """A complete GenerateContentResponse as Vertex would return it for a non-streaming call."""
    text = reply_text(body)
    ins, outs = prompt_tokens(body), estimate_tokens(text)
    usage = {"promptTokenCount": ins, "candidatesTokenCount": outs, "totalTokenCount": ins + outs}
    return {"candidates": [_candidate(text, True)], "usageMetadata": usage, "modelVersion": model}


def stream_responses(body: JsonDict, model: str) -> list[JsonDict]:
    """`generate_response` as text deltas; the last chunk carries finishReason and usage."""
    full = generate_response(body, model)
    deltas = split_deltas(full["candidates"][0]["content"]["parts"][0]["text"])
    chunks = [{"candidates": [_candidate(d, False)], "modelVersion": model} for d in deltas]
    chunks[-1] = full | {"candidates": [_candidate(deltas[-1], True)]}
    return chunks


def error_body(code: int, message: str) -> JsonDict:
    """Google's error envelope, which google-genai parses into APIError.code/status/message."""
    return {"error": {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}}


class _Server(ThreadingHTTPServer):
    """Carries the owning VertexStandin so per-request handlers can reach the shared state."""

    daemon_threads = True
    # socketserver's default backlog is 5: a burst of new connections (every streamed call is
    # one) overflows it and the kernel makes clients wait a SYN-ACK retransmit (~200 ms).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], standin: VertexStandin) -> None:
        super().__init__(address, _Handler)
        self.standin = standin


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; all state lives on the owning VertexStandin."""

    server_version = "VertexStandin/1.0"
    # Keep-alive, as Vertex AI serves its clients: a new TCP connection per call would be a
    # cost of this stand-in, measured as the caller's overhead by bench.chat_turn.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    @property
    def standin(self) -> VertexStandin:
        return cast(_Server, self.server).standin

    def log_message(self, format: str, *args: Any) -> None:
        """Per-request access lines go to logging at DEBUG instead of stderr."""
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        """Never let an exception escape: the client must always get a Google-shaped answer."""
        method, url = self.command, urlsplit(self.path)
        self.arrived = time.monotonic()
        try:
            raw = self._read_body()
            if url.path.startswith("/__standin/"):
                self._control(method, url.path, raw)
            elif method == "POST" and (m := _MODEL_PATH.match(url.path)):
                sse = parse_qs(url.query).get("alt") == ["sse"]
                self._model_call(m["model"], m["method"], raw, sse)
            else:
                self._json(404, error_body(404, f"No route for {method} {url.path}."))
        except BadRequest as exc:
            self._json(400, error_body(400, str(exc)))
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the reply (e.g. its timeout fired)")
        except Exception as exc:  # a stand-in bug still answers (500), so the client never hangs
            log.exception("vertex stand-in bug")
            self._json(500, error_body(500, f"stand-in bug: {exc!r}"))

    do_GET = do_POST = do_DELETE = _dispatch  # noqa: N815 - http.server calls do_<METHOD>

    def _read_body(self) -> bytes:
        try:
            length = max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            raise BadRequest("Invalid Content-Length header.") from None
        return self.rfile.read(length) if length else b""

    def _control(self, method: str, path: str, raw: bytes) -> None:
        standin = self.standin
        if (method, path) == ("GET", "/__standin/health"):
            self._json(200, {"status": "ok"})
        elif (method, path) == ("GET", "/__standin/requests"):
            self._json(200, {"requests": standin.requests})
        elif (method, path) == ("DELETE", "/__standin/requests"):
            standin.clear_requests()
            self._json(200, {"requests": []})
        elif (method, path) == ("DELETE", "/__standin/faults"):
            standin.reset()
            self._json(200, {"faults": []})
        elif (method, path) == ("POST", "/__standin/faults"):
            try:
                spec = json.loads(raw or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError):
                spec = None
            if not isinstance(spec, dict):
                raise BadRequest('Expected {"fault": "429", "count": 1}.')
            if "slow_s" in spec:
                if not isinstance(spec["slow_s"], (int, float)) or spec["slow_s"] < 0:
                    raise BadRequest("slow_s must be a non-negative number.")
                standin.slow_s = float(spec["slow_s"])
            standin.inject(str(spec.get("fault")), spec.get("count", 1))
            self._json(200, {"faults": standin.pending_faults})
        else:
            self._json(404, error_body(404, f"No control route for {method} {path}."))

    def _model_call(self, model: str, method: str, raw: bytes, sse: bool) -> None:
        standin = self.standin
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text) if text else None
        except json.JSONDecodeError:
            body = None
        entry = {"method": method, "model": model, "path": self.path}
        fault = standin._begin_call(entry | {"body": text if body is None else body})
        if fault in ("429", "500"):
            standin._wait(self.arrived, fault)
            code = int(fault)
            message = (
                "Resource exhausted. Please try again later." if code == 429 else "Internal error."
            )
            self._json(code, error_body(code, message))
            return
        if body is None:
            standin._wait(self.arrived, fault)
            raise BadRequest("Invalid JSON payload received.")
        _contents(body)  # validate before answering, as Vertex does
        # The answer is built before the wait, so the configured latency is the whole time this
        # stand-in holds a call (the model's latency as Vertex would report it).
        if fault == "malformed":  # truncated JSON / SSE event: the client must raise, not hang
            standin._wait(self.arrived, fault)
            if sse:
                self._sse([b'data: {"candidates": [{"content"'])
            else:
                self._send(200, b'{"candidates": [')
        elif method == "countTokens":
            answer = {"totalTokens": prompt_tokens(body)}
            standin._wait(self.arrived, fault)
            self._json(200, answer)
        elif method == "generateContent":
            data = json.dumps(generate_response(body, model)).encode()
            standin._wait(self.arrived, fault)
            self._send(200, data)
        elif sse:
            events = [b"data: " + json.dumps(c).encode() for c in stream_responses(body, model)]
            standin._wait(self.arrived, fault)
            self._sse(events)
        else:  # streamGenerateContent without alt=sse answers one JSON array, like the real API
            data = json.dumps(stream_responses(body, model)).encode()
            standin._wait(self.arrived, fault)
            self._send(200, data)

    def _json(self, code: int, payload: Any) -> None:
        self._send(code, json.dumps(payload).encode())

    def _send(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[bytes]) -> None:
        """Server-sent events, one HTTP/1.1 chunk each, on a connection that stays open (as
        Vertex AI streams)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            data = event + b"\r\n\r\n"
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")


class VertexStandin:
    """The stand-in: start() serves on a daemon thread; faults are a FIFO, one per model call."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0, slow_s: float = 5.0
    ) -> None:
        self.host, self.port = host, port
        self.latency_s = latency_s
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self._faults: deque[str] = deque()
        self._requests: deque[JsonDict] = deque(maxlen=REQUEST_LOG_SIZE)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for `types.HttpOptions(base_url=...)`; known only once started (port 0)."""
        if self._server is None:
            raise RuntimeError("VertexStandin is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("VertexStandin is already started")
        self._stopping.clear()
        server = _Server((self.host, self.port), self)
        self._server = server
        # A short poll interval keeps stop() (server.shutdown) fast; idle cost is negligible.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="vertex-standin"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("vertex stand-in listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Idempotent; also wakes handlers sleeping on latency/slow faults so shutdown is prompt."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def inject(self, fault: str, count: int = 1) -> None:
        """Queue `fault` for the next `count` model calls (after any faults already queued)."""
        if fault not in FAULTS:
            raise BadRequest(f"Unknown fault {fault!r}; expected one of {sorted(FAULTS)}.")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise BadRequest("count must be a positive integer.")
        with self._lock:
            self._faults.extend([fault] * count)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[str]:
        with self._lock:
            return list(self._faults)

    @property
    def requests(self) -> list[JsonDict]:
        """The last 50 model calls, oldest first, so tests can check the exact prompt sent."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _begin_call(self, entry: JsonDict) -> str | None:
        """Log a model call and take its fault (if any)."""
        with self._lock:
            self._requests.append(entry)
            return self._faults.popleft() if self._faults else None

    def _wait(self, arrived: float, fault: str | None) -> None:
        """Hold the call until its latency (plus the slow fault's) has passed since it arrived;
        stop() cuts it short."""
        delay = self.latency_s + (self.slow_s if fault == "slow" else 0.0)
        remaining = delay - (time.monotonic() - arrived)
        if remaining > 0:
            self._stopping.wait(remaining)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; prints the URL first so a parent using --port 0 can find it."""
    parser = argparse.ArgumentParser(prog="python -m emulators.vertex_standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sleep before each reply")
    parser.add_argument("--slow-ms", type=float, default=5000.0, help="sleep of the 'slow' fault")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: done.set())
    standin = VertexStandin(args.host, args.port, args.latency_ms / 1000, args.slow_ms / 1000)
    standin.start()
    sys.stdout.write(f"vertex stand-in listening on {standin.url}\n")
    sys.stdout.flush()
    try:
        done.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
