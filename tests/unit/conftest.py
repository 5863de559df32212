"""Unit tier: pure logic and the real functions-framework app, no services."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "functions"


@pytest.fixture(autouse=True)
def _unit_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from shared import clients

    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "unit-project")
    for name in ("DATABASE_URL", "INSTANCE_CONNECTION_NAME", "PUSH_AUDIENCE", "JWT_JWKS_URL",
                 "JWT_PUBLIC_KEY_PEM"):
        monkeypatch.delenv(name, raising=False)
    clients.reset()
    yield
    clients.reset()


class LogCapture:
    """JSON log lines written through the product's formatter, parsed back."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def raw(self) -> str:
        return self.stream.getvalue()

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw.splitlines() if line.strip()]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    from shared.logs import setup_logging

    capture = LogCapture()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("unit-project", "DEBUG", stream=capture.stream)
    try:
        yield capture
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def make_client(name: str, target: str | None = None) -> Any:
    from functions_framework import create_app

    app = create_app(target or name, str(FIXTURES / name / "main.py"))
    return app.test_client()
