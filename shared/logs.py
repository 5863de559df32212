"""Structured logs in Cloud Logging's JSON shape, set up once per instance.

Every line inside a request or delivery carries its trace id (`logging.googleapis.com/trace`) and
span id; secrets in field names (authorization, cookie, password, token, secret, api key) and
secret-looking values in messages (bearer tokens, JWTs, `password=...`) are masked before output.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared import context

MASK = "***"
_SECRET_KEY = re.compile(
    r"(authorization|cookie|passw(or)?d|token|secret|api[-_]?key|credential|signature|session)",
    re.IGNORECASE,
)
_COUNT_KEY = re.compile(r"(count|tokens)$", re.IGNORECASE)
_SECRET_TEXT = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), MASK),
    (
        re.compile(
            r"(?i)((?:authorization|cookie|passw(?:or)?d|[a-z_]*token|secret|api[-_]?key)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)"
        ),
        r"\1" + MASK,
    ),
)
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def mask_text(text: str) -> str:
    """Replace secret-looking substrings of free text."""
    for pattern, repl in _SECRET_TEXT:
        text = pattern.sub(repl, text)
    return text


def mask(value: Any, key: str | None = None) -> Any:
    """Mask secrets in a JSON-like value: by field name, and by shape in strings."""
    if key is not None and _SECRET_KEY.search(key) and value not in (None, "", [], {}):
        # Flags and token counts (genai usage) stay readable; a numeric password does not.
        counted = isinstance(value, int | float) and _COUNT_KEY.search(key)
        if not (isinstance(value, bool) or counted):
            return MASK
    if isinstance(value, Mapping):
        return {str(k): mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line, in the shape Cloud Logging parses from stdout."""

    def __init__(self, project: str) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": mask_text(record.getMessage()),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        ctx = context.current()
        if ctx is not None:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{ctx.trace_id}"
            entry["logging.googleapis.com/spanId"] = ctx.span_id
            entry["logging.googleapis.com/trace_sampled"] = ctx.sampled
            entry["requestId"] = ctx.request_id
        for name, value in vars(record).items():
            if name not in _STD_ATTRS and not name.startswith("_"):
                entry[name] = mask(value, name)
        if record.exc_info:
            # Stack traces go to the log (for operators), never to clients.
            entry["stack_trace"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


_configured = False
# Client libraries that log a line at INFO for every call they make ("HTTP Request: POST ...",
# google-genai's "AFC is enabled"): per-turn noise that costs CPU and Cloud Logging volume. Their
# warnings and errors still come through.
_CHATTY = ("httpx", "httpx2", "httpcore", "google_genai")


def setup_logging(project: str, level: str = "INFO", stream: Any = None) -> None:
    """Install the JSON formatter on the root logger once per instance."""
    global _configured
    if _configured and stream is None:
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(CloudLoggingFormatter(project))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    _configured = True
