"""Helpers for tests of the identity functions; the `identity` fixture is in conftest.py."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


@dataclass
class Identity:
    auth: Any  # Flask test clients
    users: Any
    engine: sqlalchemy.Engine
    signing_key: dict[str, str]

    def signup(self, email: str | None = None, password: str = PASSWORD, **extra: Any
               ) -> dict[str, Any]:
        email = email or f"u-{uuid.uuid4().hex[:10]}@example.com"
        resp = self.auth.post("/signup", json={"email": email, "password": password,
                                               "display_name": "Ann", **extra})
        assert resp.status_code == 201, resp.json
        return dict(resp.json) | {"email": email}

    def bearer(self, tokens: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.begin() as conn:
            result = conn.execute(sqlalchemy.text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []

    def make_admin(self, tokens: dict[str, Any]) -> None:
        self.sql("UPDATE users SET roles = ARRAY['user','admin'] WHERE id = :id",
                 id=tokens["user_id"])
