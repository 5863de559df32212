"""The database engine, created lazily once per instance.

Production reaches Cloud SQL through cloud-sql-python-connector with IAM database auth
(`INSTANCE_CONNECTION_NAME`); locally a plain SQLAlchemy URL (`DATABASE_URL`). SQLAlchemy is
imported on first use, not at function import, to keep cold starts short.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from shared.config import ConfigError, get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine


@cache
def engine() -> Engine:
    """The instance's engine. Small pool: one function instance serves few concurrent requests."""
    import sqlalchemy

    settings = get_settings()
    pool: dict[str, Any] = {"pool_size": 5, "max_overflow": 5, "pool_pre_ping": True,
                            "pool_recycle": 1800}
    if settings.instance_connection_name:
        return sqlalchemy.create_engine("postgresql+pg8000://", creator=_connector_creator(),
                                        **pool)
    if not settings.database_url:
        raise ConfigError("set DATABASE_URL (local) or INSTANCE_CONNECTION_NAME (Cloud SQL)")
    url = settings.database_url
    if url.startswith("postgresql://"):
        url = "postgresql+pg8000://" + url.removeprefix("postgresql://")
    return sqlalchemy.create_engine(url, **pool)


def _connector_creator() -> Any:
    settings = get_settings()

    @cache
    def connector() -> Any:
        # Built on the first connection, not with the engine: it reads credentials.
        from google.cloud.sql.connector import Connector

        # LAZY refresh: serverless CPU is throttled between requests, so background refresh
        # of the instance certificate would fail.
        return Connector(refresh_strategy="LAZY")

    def connect() -> Any:
        from google.cloud.sql.connector import IPTypes

        return connector().connect(
            str(settings.instance_connection_name),
            "pg8000",
            user=settings.db_user,
            db=settings.db_name,
            enable_iam_auth=True,
            ip_type=IPTypes.PRIVATE,
        )

    return connect


@contextmanager
def transaction() -> Iterator[Connection]:
    """A connection in a transaction: committed on normal exit, rolled back on error."""
    with engine().begin() as conn:
        yield conn
