"""Daily partitions of the telemetry tables (`spans`, `logs`): created ahead of the data and
dropped whole when they age out, which is how retention stays cheap at millions of rows a day.

Partition `spans_p20261121` holds spans starting on 2026-11-21 (UTC). Creating one is
serialized by an advisory lock and remembered per instance, so the writer's hot path pays a set
lookup, not a catalog query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

TABLES = ("spans", "logs")
DEFAULT_RETENTION_DAYS = 7
_PARTITION = re.compile(r"^(spans|logs)_p(\d{8})$")
_known: set[tuple[str, str, date]] = set()  # (database, table, day)


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_of(unix_nano: int) -> date:
    return datetime.fromtimestamp(unix_nano / 1e9, UTC).date()


def ensure_partitions(conn: Connection, table: str, days: Iterable[date]) -> None:
    """Make sure `table` has a partition for each day, in the caller's transaction, which must
    hold no lock on `table` (creating a partition locks the parent exclusively)."""
    if table not in TABLES:
        raise ValueError(f"not a telemetry table: {table}")
    database = _database(conn)
    missing = sorted({d for d in days if (database, table, d) not in _known})
    if not missing:
        return
    conn.execute(_sql("SELECT pg_advisory_xact_lock(hashtext('telemetry_partitions'))"))
    for day in missing:
        name = partition_name(table, day)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        conn.execute(_sql(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
            f"FOR VALUES FROM ('{start.isoformat()}') "
            f"TO ('{(start + timedelta(days=1)).isoformat()}')"))
        _known.add((database, table, day))


def _database(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


def known(database: str, table: str, days: Iterable[date]) -> bool:
    """Whether this instance already made sure of these partitions in that database."""
    return all((database, table, d) in _known for d in days)


def database_key() -> str:
    from shared import db

    return db.engine().url.render_as_string(hide_password=True)


def forget_known() -> None:
    """Forget which partitions exist (after a retention drop, and in tests)."""
    _known.clear()


def partitions(conn: Connection) -> list[tuple[str, date]]:
    """(table, day) of every telemetry partition, oldest first."""
    rows = conn.execute(_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('spans', 'logs')")).all()
    found = []
    for (name,) in rows:
        match = _PARTITION.match(name)
        if match:
            found.append((match.group(1), datetime.strptime(match.group(2), "%Y%m%d").date()))
    return sorted(found, key=lambda item: (item[1], item[0]))


def drop_partitions_before(conn: Connection, cutoff: date) -> list[str]:
    """Drop whole days older than `cutoff`; the names dropped."""
    dropped = []
    for table, day in partitions(conn):
        if day < cutoff:
            name = partition_name(table, day)
            conn.execute(_sql(f"DROP TABLE IF EXISTS {name}"))
            dropped.append(name)
    if dropped:
        forget_known()
    return dropped


def retention_cutoff(retention_days: int, today: date | None = None) -> date:
    """The first day kept: partitions of earlier days are dropped, rows for them refused."""
    return (today or datetime.now(UTC).date()) - timedelta(days=retention_days)


def apply_retention(conn: Connection, retention_days: int, today: date | None = None
                    ) -> list[str]:
    """The daily job: partitions for today and tomorrow exist before data needs them, and
    whole days older than the retention are dropped. Returns the partitions dropped."""
    today = today or datetime.now(UTC).date()
    for table in TABLES:
        ensure_partitions(conn, table, (today, today + timedelta(days=1)))
    return drop_partitions_before(conn, retention_cutoff(retention_days, today))


DEFAULT_ROLLUP_RETENTION_DAYS = 90


def prune_rollups(conn: Connection, retention_days: int = DEFAULT_ROLLUP_RETENTION_DAYS) -> int:
    """Minute rollups outlive raw spans (they are small); older than this they go."""
    return int(conn.execute(_sql(
        "DELETE FROM rollups WHERE minute < now() - make_interval(days => :d)"),
        {"d": retention_days}).rowcount)
