"""Telemetry tokens: what an OpenTelemetry SDK or Collector sends to `span_ingest` (scope
`ingest`) and what a dashboard such as Grafana's Jaeger data source sends to `telemetry_query`
(scope `read`), each bound to one tenant.

A token is `tt_` + 32 random bytes (base64url); only its SHA-256 is stored, so a database
leak does not leak tokens. Tokens are recognized by their prefix, which is what lets a bearer
token be either a user's JWT or a telemetry token.

    python -m shared.telemetry_tokens create --tenant acme --scope ingest [--description ...]
    python -m shared.telemetry_tokens revoke TOKEN
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import errors

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

PREFIX = "tt_"
SCOPES = ("ingest", "read")


@dataclass(frozen=True)
class TelemetryToken:
    tenant: str
    scope: str


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def is_telemetry_token(value: str) -> bool:
    return value.startswith(PREFIX)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create(conn: Connection, tenant: str, scope: str, description: str = "") -> str:
    """A new token (shown once) for `tenant` with `scope`."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    if not tenant or len(tenant) > 64:
        raise ValueError("tenant must be 1-64 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    conn.execute(_sql(
        "INSERT INTO telemetry_tokens (token_hash, tenant, scope, description) "
        "VALUES (:h, :t, :s, :d)"), {"h": digest(token), "t": tenant, "s": scope,
                                     "d": description})
    return token


def revoke(conn: Connection, token: str) -> bool:
    return bool(conn.execute(_sql(
        "UPDATE telemetry_tokens SET revoked_at = now() WHERE token_hash = :h "
        "AND revoked_at IS NULL"), {"h": digest(token)}).rowcount)


def verify(conn: Connection, token: str, scope: str) -> TelemetryToken:
    """The token's tenant, or 401 when it is unknown, revoked or of another scope."""
    row = conn.execute(_sql(
        "SELECT tenant, scope FROM telemetry_tokens WHERE token_hash = :h "
        "AND revoked_at IS NULL"), {"h": digest(token)}).first()
    if row is None or row[1] != scope:
        raise errors.Unauthorized(f"not a valid {scope} token")
    return TelemetryToken(row[0], row[1])


def main(argv: list[str] | None = None) -> int:
    from shared import db

    parser = argparse.ArgumentParser(prog="python -m shared.telemetry_tokens",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="create a token and print it (shown once)")
    make.add_argument("--tenant", required=True)
    make.add_argument("--scope", required=True, choices=SCOPES)
    make.add_argument("--description", default="")
    drop = sub.add_parser("revoke", help="revoke a token")
    drop.add_argument("token")
    args = parser.parse_args(argv)
    with db.transaction() as conn:
        if args.command == "create":
            sys.stdout.write(create(conn, args.tenant, args.scope, args.description) + "\n")
            return 0
        return 0 if revoke(conn, args.token) else 1


if __name__ == "__main__":
    sys.exit(main())
