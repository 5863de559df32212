"""The shared token bucket against real PostgreSQL: one upsert per decision.

Elapsed time is simulated by moving a bucket's `updated_at` back, never by sleeping, and rates
are low enough that the real time a test takes adds a negligible refill.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy

from shared import db
from shared.ratelimit import Decision, Limit, headers, prune_idle, take

# One token per 1000 s: the few ms between statements refill ~1e-5 of a token.
SLOW = Limit("slow", 0.001, 3)


@pytest.fixture
def engine(platform_env: dict[str, str]) -> Iterator[sqlalchemy.Engine]:
    yield db.engine()


def _take(limit: Limit, caller: str, cost: float = 1.0) -> Decision:
    with db.transaction() as conn:  # as the router does: its own short transaction
        return take(conn, limit, caller, cost)


def _tokens(key: str) -> float:
    with db.transaction() as conn:
        value = conn.execute(sqlalchemy.text("SELECT tokens FROM rate_limits WHERE key = :k"),
                             {"k": key}).scalar_one()
    return float(value)


def _shift(key: str, seconds: float) -> None:
    """Pretend `seconds` passed since the bucket was last touched (negative: freeze it)."""
    with db.transaction() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE rate_limits SET updated_at = updated_at - make_interval(secs => :s) "
            "WHERE key = :k"), {"s": seconds, "k": key})


def test_burst_then_deny_with_retry_after(engine: sqlalchemy.Engine) -> None:
    allowed = [_take(SLOW, "ip:192.0.2.1") for _ in range(SLOW.burst)]
    assert [d.allowed for d in allowed] == [True] * 3
    assert [d.remaining for d in allowed] == [2, 1, 0]
    assert all(d.retry_after_s == 0 for d in allowed)

    denied = _take(SLOW, "ip:192.0.2.1")
    assert not denied.allowed and denied.remaining == 0
    # A denial stores the refill it saw: the retry is the time to grow that to one token.
    left = _tokens("slow:ip:192.0.2.1")
    assert 0 <= left < 1
    assert denied.retry_after_s == math.ceil((1 - left) / SLOW.rate_per_s)
    assert 1 <= denied.retry_after_s <= 1000
    assert denied.reset_s == math.ceil((SLOW.burst - left) / SLOW.rate_per_s)
    assert headers(denied)["Retry-After"] == str(denied.retry_after_s)


def test_exact_numbers_when_the_clock_stands_still(engine: sqlalchemy.Engine) -> None:
    # updated_at an hour ahead: the statement never moves a bucket's time backwards (a clock
    # step), so no refill happens and every number is exact.
    limit = Limit("still", 0.5, 3)
    assert _take(limit, "c").remaining == 2
    _shift("still:c", -3600)
    assert [_take(limit, "c").remaining for _ in range(2)] == [1, 0]
    denied = _take(limit, "c")
    assert (denied.allowed, denied.remaining, denied.retry_after_s, denied.reset_s) == (
        False, 0, 2, 6)
    assert headers(denied) == {"RateLimit-Policy": '"still";q=3;w=6',
                               "RateLimit": '"still";r=0;t=2', "Retry-After": "2"}
    assert _tokens("still:c") == 0.0


def test_refill_over_time_is_capped_at_burst(engine: sqlalchemy.Engine) -> None:
    for _ in range(4):
        _take(SLOW, "u")
    _shift("slow:u", 1500)  # 1.5 tokens come back
    refilled = _take(SLOW, "u")
    assert refilled.allowed and refilled.remaining == 0
    again = _take(SLOW, "u")  # ~0.5 left: not enough
    assert not again.allowed
    assert 400 < again.retry_after_s <= 500

    _shift("slow:u", 10 * 24 * 3600)  # far longer than a full refill
    full = _take(SLOW, "u")
    assert full.allowed and full.remaining == SLOW.burst - 1
    assert _tokens("slow:u") == SLOW.burst - 1  # capped at burst, then one taken


def test_cost_is_taken_only_when_the_bucket_holds_it(engine: sqlalchemy.Engine) -> None:
    limit = Limit("bulk", 0.001, 5)
    assert _take(limit, "c", cost=3).remaining == 2
    denied = _take(limit, "c", cost=3)
    assert not denied.allowed and denied.remaining == 2  # nothing was taken
    assert _take(limit, "c", cost=2).allowed
    with pytest.raises(ValueError, match="cost"):
        _take(limit, "c", cost=6)


def test_buckets_are_per_class_and_per_caller(engine: sqlalchemy.Engine) -> None:
    auth, chat = Limit("auth", 0.001, 1), Limit("chat", 0.001, 1)
    assert _take(auth, "ip:192.0.2.1").allowed
    assert not _take(auth, "ip:192.0.2.1").allowed
    assert _take(auth, "ip:192.0.2.2").allowed  # another caller, same class
    assert _take(chat, "ip:192.0.2.1").allowed  # same caller, another class
    with engine.connect() as conn:
        keys = set(conn.execute(sqlalchemy.text("SELECT key FROM rate_limits")).scalars())
    assert keys == {"auth:ip:192.0.2.1", "auth:ip:192.0.2.2", "chat:ip:192.0.2.1"}


@pytest.mark.parametrize("caller", [
    "user:x'); DROP TABLE rate_limits; --", "user:\\'\"$$ $q$", "user:ünï\u00e7ødé ✓", "user:",
])
def test_any_caller_text_lands_verbatim_in_its_own_key(engine: sqlalchemy.Engine,
                                                       caller: str) -> None:
    # The statement inlines the key (as hex): whatever the subject holds, it is only data.
    limit = Limit("k", 0.001, 1)
    assert _take(limit, caller).allowed
    assert not _take(limit, caller).allowed
    assert _tokens(f"k:{caller}") < 1


def test_decisions_inside_one_longer_transaction(engine: sqlalchemy.Engine) -> None:
    # The decision of each statement is its own, even after a denial in the same transaction
    # (it travels in a transaction-local setting), and a new key still starts full.
    limit = Limit("tx", 0.001, 1)
    with db.transaction() as conn:
        assert take(conn, limit, "a").allowed
        assert not take(conn, limit, "a").allowed
        fresh = take(conn, limit, "b")
        assert fresh.allowed and fresh.remaining == 0


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "AUTOCOMMIT"])
def test_concurrent_callers_on_one_key_get_exactly_burst(
        platform_env: dict[str, str], isolation: str) -> None:
    limit = Limit("hot", 1e-6, 50)  # refill over the test: ~1e-5 of a token
    threads, attempts = 20, 10
    # Its own engine: every thread needs its own connection at the same moment.
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"], pool_size=threads)
    start = threading.Barrier(threads)

    def hammer() -> list[Decision]:
        with engine.connect().execution_options(isolation_level=isolation) as conn:
            start.wait()
            out = []
            for _ in range(attempts):
                with conn.begin():
                    out.append(take(conn, limit, "ip:203.0.113.9"))
            return out

    try:
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(hammer) for _ in range(threads)]
            decisions = [d for f in futures for d in f.result()]  # re-raises a thread's error
    finally:
        engine.dispose()
    assert len(decisions) == threads * attempts
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == limit.burst
    # Serialized by the row lock: every allowed decision saw a different bucket.
    assert sorted(d.remaining for d in allowed) == list(range(limit.burst))


def test_prune_idle_removes_only_buckets_that_are_full_again(engine: sqlalchemy.Engine) -> None:
    limit = Limit("p", 1, 10)  # full again 10 s after being emptied
    for _ in range(10):
        _take(limit, "idle")
    _take(limit, "busy")
    _shift("p:idle", 60)
    with db.transaction() as conn:
        assert prune_idle(conn, older_than_s=limit.refill_s) == 1
    with engine.connect() as conn:
        keys = set(conn.execute(sqlalchemy.text("SELECT key FROM rate_limits")).scalars())
    assert keys == {"p:busy"}
    # The pruned key starts full, as the idle bucket had become: same decision either way.
    assert _take(limit, "idle").remaining == limit.burst - 1
    with db.transaction() as conn, pytest.raises(ValueError, match="older_than_s"):
        prune_idle(conn, 0)


def test_prune_idle_in_batches(engine: sqlalchemy.Engine) -> None:
    limit = Limit("pb", 1, 1)
    for n in range(5):
        _take(limit, f"idle-{n}")
        _shift(f"pb:idle-{n}", 60)
    _take(limit, "busy")
    removed = []
    while True:
        with db.transaction() as conn:  # a short transaction per batch
            removed.append(prune_idle(conn, older_than_s=limit.refill_s, batch=2))
        if removed[-1] < 2:
            break
    assert removed == [2, 2, 1]
    assert _tokens("pb:busy") < 1  # the active bucket stays


@pytest.mark.parametrize("batch", [None, 10])
def test_prune_racing_a_take_keeps_the_refreshed_bucket(engine: sqlalchemy.Engine,
                                                        batch: int | None) -> None:
    limit = Limit("race", 1, 3)
    for _ in range(3):
        _take(limit, "c")
    _shift("race:c", 60)  # idle, so the prune picks it...
    with engine.connect() as holder:
        holder.begin()
        take(holder, limit, "c")  # ...but a take has just refreshed it, not yet committed
        with ThreadPoolExecutor(1) as pool:
            pruned = pool.submit(_prune, limit.refill_s, batch)
            _wait_until_blocked_on_a_lock(engine)
            holder.commit()
            assert pruned.result() == 0  # rechecked after the lock: no longer idle
    assert _tokens("race:c") == limit.burst - 1


def _prune(older_than_s: float, batch: int | None) -> int:
    with db.transaction() as conn:
        return prune_idle(conn, older_than_s, batch)


def _wait_until_blocked_on_a_lock(engine: sqlalchemy.Engine) -> None:
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE 'DELETE FROM rate_limits%'")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for _ in range(2000):  # a bound against hanging, not a timing assertion
            if conn.execute(query).scalar_one():
                return
            time.sleep(0.005)
    pytest.fail("the prune never waited for the row lock")
