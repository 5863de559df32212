"""The database engine, created lazily once per instance.

Production reaches Cloud SQL through cloud-sql-python-connector with IAM database auth
(`INSTANCE_CONNECTION_NAME`); locally a plain SQLAlchemy URL (`DATABASE_URL`). The driver is
psycopg 3 either way. SQLAlchemy is
imported on first use, not at function import, to keep cold starts short.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shared.config import ConfigError, get_settings
from shared.lazy import instance_cache

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine


POOL_SIZE = 10
# How long a request waits for a pooled connection before failing (SQLAlchemy's default).
POOL_TIMEOUT_S = 30.0
# A pooled connection idle longer than this is checked with `SELECT 1` before use (the server
# may have closed it: a restart, a failover, an idle timeout); one used moments ago is not.
# SQLAlchemy's pool_pre_ping would check on every checkout: a round trip per transaction.
IDLE_PING_S = 5.0


@instance_cache
def engine() -> Engine:
    """The instance's engine. Small pool: one function instance serves few concurrent requests."""
    return _create_engine()


@instance_cache
def autocommit_engine() -> Engine:
    """For single statements that are their own transaction (a rate-limit decision): no
    BEGIN/COMMIT round trips, and a row lock is held only for the statement itself."""
    return _create_engine(isolation_level="AUTOCOMMIT")


def _create_engine(**options: Any) -> Engine:
    import sqlalchemy

    settings = get_settings()
    # Up to POOL_SIZE connections, kept once made (made lazily, so a quiet instance holds
    # few) and none beyond: a busy instance waits briefly for a pooled connection instead of
    # opening and closing "overflow" connections per request, each a new TCP session, SSL
    # negotiation and backend (this churn was a quarter of chat_turn's CPU at 20 concurrent
    # turns). Two engines per instance: at most 2 x POOL_SIZE connections to the database.
    # A request never waits for a second connection of a pool it already holds one of (with
    # every connection held that way, each would wait for another): what must commit apart
    # from the request's transaction is one statement on the autocommit engine.
    # psycopg's automatic server-side prepared statements stay off: a plan prepared before a
    # migration can fail after it ("cached plan must not change result type"), and the
    # migration job runs while instances serve.
    pool: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": 0,
                            "pool_timeout": POOL_TIMEOUT_S, "pool_recycle": 1800} | options
    if settings.instance_connection_name:
        created = sqlalchemy.create_engine("postgresql+psycopg://",
                                           creator=_connector_creator(), **pool)
    else:
        if not settings.database_url:
            raise ConfigError("set DATABASE_URL (local) or INSTANCE_CONNECTION_NAME (Cloud SQL)")
        created = sqlalchemy.create_engine(
            driver_url(settings.database_url), **pool,
            connect_args={"prepare_threshold": None})
    _ping_when_idle(created)
    return created


def driver_url(url: str) -> URL:
    """Any postgres:// or postgresql[+driver]:// URL, for the driver we ship (psycopg 3); the
    local cloud normalizes its URLs with this too."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername.split("+")[0] not in ("postgres", "postgresql"):
        raise ValueError("DATABASE_URL is not a PostgreSQL URL")
    return parsed.set(drivername="postgresql+psycopg")


def _ping_when_idle(created: Engine) -> None:
    """Pessimistic disconnect handling, only for connections that sat idle: a failed ping
    raises DisconnectionError, and the pool replaces the connection and tries again."""
    import time

    from sqlalchemy import event, exc

    @event.listens_for(created, "connect")
    def fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(created, "checkin")
    def returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(created, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("returned_at", 0.0) <= IDLE_PING_S:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as error:
            raise exc.DisconnectionError(f"pooled connection is gone: {error!r}") from error


@instance_cache
def _connector() -> Any:
    """One Cloud SQL connector per instance, built on the first connection (it reads
    credentials). LAZY refresh: serverless CPU is throttled between requests, so a background
    refresh of the instance certificate would fail."""
    from google.cloud.sql.connector import Connector

    return Connector(refresh_strategy="LAZY")


def _connector_creator() -> Any:
    settings = get_settings()

    def connect() -> Any:
        from google.cloud.sql.connector import IPTypes

        # Functions sign in as their service account (IAM auth); the migration job, which
        # owns the schema, as a built-in user with a password from Secret Manager.
        password = os.environ.get("DB_PASSWORD")
        connection = _connector().connect(
            str(settings.instance_connection_name),
            "psycopg",
            user=os.environ.get("DB_USER") if password else settings.db_user,
            password=password,
            db=settings.db_name,
            enable_iam_auth=not password,
            # The connector authorizes and encrypts either way; PRIVATE needs the function on
            # the instance's VPC (DB_IP_TYPE=private), PUBLIC needs no network setup.
            ip_type=IPTypes.PRIVATE if os.environ.get("DB_IP_TYPE") == "private"
            else IPTypes.PUBLIC,
        )
        connection.prepare_threshold = None  # see _create_engine
        return connection

    return connect


@contextmanager
def transaction() -> Iterator[Connection]:
    """A connection in a transaction: committed on normal exit, rolled back on error."""
    with engine().connect() as conn, _discarded_on_unexpected_errors(conn), conn.begin():
        yield conn


@contextmanager
def autocommit() -> Iterator[Connection]:
    """A connection whose every statement is its own transaction: for a request's reads that
    need no common snapshot (no BEGIN/COMMIT round trips)."""
    with autocommit_engine().connect() as conn, _discarded_on_unexpected_errors(conn):
        yield conn


@contextmanager
def _discarded_on_unexpected_errors(conn: Connection) -> Iterator[None]:
    """On an unexpected error the connection is discarded, not returned to the pool: an
    exception raised inside the driver mid-message (an encoding error, say) can leave the
    protocol stream half-written, and the next request to reuse it would fail. Domain errors
    (AppError) are raised by our code between statements and leave the connection sound."""
    from shared.errors import AppError

    try:
        yield
    except AppError:
        raise
    except BaseException:
        conn.invalidate()
        raise
