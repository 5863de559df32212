"""Per-caller rate limits shared by every instance: a token bucket per (route class, caller) row in
PostgreSQL, decided by ONE atomic upsert.

The upsert's row lock serializes concurrent decisions on a key, so N instances never let more than
`burst + rate * elapsed` through, with no read-then-write and no explicit lock. Call `take` before
the request's work, in autocommit or its own short READ COMMITTED transaction: the row lock is held
until commit, and under REPEATABLE READ a concurrent decision fails with a serialization error.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Float arithmetic on refills leaves crumbs like 1.9999999999 or 2.0000000001; without slack
# these would turn an exact 2 s into 3 s or 2 tokens into 1.
_EPSILON = 1e-9
# The class name goes into the bucket key ("<name>:<caller>") and, unescaped, into a Structured
# Field string: keep it to characters that need no quoting in either.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")

# RETURNING cannot see the pre-update row before PostgreSQL 18 (`RETURNING old.*`), so the
# decision travels in a transaction-local setting written by the same statement: reset to true
# for a new key (it starts full and takes `cost`, which `take` checks is <= burst), set from the
# refill when the key exists. "now" is read after the row lock is granted and never goes behind
# the stored time (clock steps), so a waiter is credited for the time it waited, and
# clock_timestamp(), unlike now(), advances inside a long transaction. A denial stores the refill
# it computed, which changes no later decision: the bucket was below `cost`, so below its cap.
#
# Values are inlined, not bound. With pg8000 (the driver before psycopg) a bound statement took
# three round trips and a Python scan of the SQL, and inlining halved the client time per
# decision (bench/ratelimit.py); psycopg binds in the same round trip, so now it only spares
# the server a bind step. Nothing inlined can carry SQL: the key arrives as hex digits, the
# numbers as repr() of floats checked to be finite.
_TAKE = """
    WITH fresh AS (SELECT set_config('ratelimit.allowed', 'true', true))
    INSERT INTO rate_limits AS b (key, tokens, updated_at)
    SELECT convert_from(decode('{key}', 'hex'), 'UTF8'), {burst} - {cost}, clock_timestamp()
    FROM fresh
    ON CONFLICT (key) DO UPDATE SET (tokens, updated_at) = (
        SELECT CASE WHEN CAST(set_config('ratelimit.allowed',
                                         CAST(f.refilled >= {cost} AS text), true) AS boolean)
                    THEN f.refilled - {cost} ELSE f.refilled END,
               f.now
        FROM (SELECT n.now, least({burst}, b.tokens + {rate}
                                  * extract(epoch FROM n.now - b.updated_at)) AS refilled
              FROM (SELECT greatest(b.updated_at, clock_timestamp()) AS now) n) f)
    RETURNING tokens, CAST(current_setting('ratelimit.allowed') AS boolean) AS allowed
"""

# Nothing in the table says which limit a key belongs to, hence the caller's `older_than_s`. The
# batched form repeats the condition on the target row, so a bucket that a `take` refreshed while
# the delete waited for its lock is rechecked and kept.
_IDLE = "updated_at < clock_timestamp() - make_interval(secs => :age)"
_PRUNE = f"DELETE FROM rate_limits WHERE {_IDLE}"
_PRUNE_BATCH = f"{_PRUNE} AND key IN (SELECT key FROM rate_limits WHERE {_IDLE} LIMIT :batch)"


@dataclass(frozen=True)
class Limit:
    name: str
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"rate limit class {self.name!r}: use letters, digits, _ . -")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate limit {self.name}: rate must be > 0, got {self.rate_per_s}")
        if self.burst < 1:
            raise ValueError(f"rate limit {self.name}: burst must be >= 1, got {self.burst}")

    @property
    def refill_s(self) -> float:
        """Seconds for an empty bucket to fill: past this, an idle bucket is full."""
        return self.burst / self.rate_per_s


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: Limit
    remaining: int  # whole tokens left after this decision
    retry_after_s: int  # until the bucket holds this request's cost again; 0 when allowed
    reset_s: int  # until the bucket is full again


def limit_from_env(env: Mapping[str, str]) -> Limit | None:
    """The function's limit from RATE_LIMIT_CLASS/_RATE/_BURST; None when no class is set."""
    name = env.get("RATE_LIMIT_CLASS", "").strip()
    if not name:
        return None
    rate_text, burst_text = env.get("RATE_LIMIT_RATE"), env.get("RATE_LIMIT_BURST")
    if rate_text is None or burst_text is None:
        raise ValueError(f"RATE_LIMIT_CLASS={name} needs RATE_LIMIT_RATE and RATE_LIMIT_BURST")
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"RATE_LIMIT_RATE must be a number, got {rate_text!r}") from None
    try:
        burst = int(burst_text)
    except ValueError:
        raise ValueError(f"RATE_LIMIT_BURST must be an integer, got {burst_text!r}") from None
    return Limit(name, rate, burst)


def take(conn: Connection, limit: Limit, caller: str, cost: float = 1.0) -> Decision:
    """Take `cost` tokens from the bucket of (`limit`, `caller`) if it holds them."""
    if not (0 < cost <= limit.burst):
        # More than a full bucket could never be allowed; say so instead of denying forever.
        raise ValueError(f"cost must be in (0, {limit.burst}] for {limit.name}, got {cost}")
    statement = _TAKE.format(key=f"{limit.name}:{caller}".encode().hex(),
                             rate=_float8(limit.rate_per_s), burst=_float8(limit.burst),
                             cost=_float8(cost))
    row = conn.exec_driver_sql(statement).one()
    tokens, allowed = float(row.tokens), bool(row.allowed)
    retry = 0 if allowed else max(1, _ceil((cost - tokens) / limit.rate_per_s))
    return Decision(allowed, limit, remaining=max(0, math.floor(tokens + _EPSILON)),
                    retry_after_s=retry, reset_s=_ceil((limit.burst - tokens) / limit.rate_per_s))


def prune_idle(conn: Connection, older_than_s: float, batch: int | None = None) -> int:
    """Delete buckets untouched for `older_than_s` (at most `batch` of them); returns how many.

    Safe when `older_than_s` >= the longest `Limit.refill_s` in use: such a bucket is full, and a
    missing key starts full, so no decision changes. A `take` racing the delete either commits
    first (the delete's recheck then skips the fresh row) or waits and recreates the key, full.
    With `batch`, call again (a transaction each) until it returns less than `batch`.
    """
    if older_than_s <= 0 or (batch is not None and batch < 1):
        raise ValueError(f"need older_than_s > 0 and batch >= 1, got {older_than_s}, {batch}")
    import sqlalchemy

    sql, params = (_PRUNE, {"age": float(older_than_s)}) if batch is None else (
        _PRUNE_BATCH, {"age": float(older_than_s), "batch": batch})
    return int(conn.execute(sqlalchemy.text(sql), params).rowcount)


def headers(decision: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit fields of draft-ietf-httpapi-ratelimit-headers-10 (Sep 2025;
    unchanged in -11), plus Retry-After on a denial.

    Policy: quota q = burst over window w = the time to refill it. `t` is the time until the bucket
    is full; on a denial it is Retry-After instead, because the draft (section 6) says Retry-After
    SHOULD NOT point earlier than the end of the effective window, and with r=0 the client really
    can use nothing for that long.
    """
    limit = decision.limit
    window = decision.reset_s if decision.allowed else decision.retry_after_s
    fields = {
        "RateLimit-Policy": f'"{limit.name}";q={limit.burst};w={_ceil(limit.refill_s)}',
        "RateLimit": f'"{limit.name}";r={decision.remaining};t={window}',
    }
    if not decision.allowed:
        fields["Retry-After"] = str(decision.retry_after_s)
    return fields


def client_ip(forwarded_for: str | None, remote_addr: str | None) -> str | None:
    """The caller's address: the LAST X-Forwarded-For entry, else the peer; None if neither is an
    IP address.

    Google's front end for Cloud Run appends the client address it saw to X-Forwarded-For; every
    earlier entry is whatever the client sent. (Behind an external Application Load Balancer the
    LB appends "<client>, <lb address>", making the client second to last: revisit this if one is
    put in front.) The peer is the fallback: on Cloud Run it is Google's proxy, shared by all.
    """
    last_hop = forwarded_for.rsplit(",", 1)[-1] if forwarded_for else None
    for candidate in (last_hop, remote_addr):
        try:
            address = ipaddress.ip_address((candidate or "").strip())
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address):
            # ::ffff:a.b.c.d is an IPv4 caller; via the integer, a scope id ("%eth0") is dropped.
            return str(address.ipv4_mapped or ipaddress.IPv6Address(int(address)))
        return str(address)
    return None


def caller_key(principal_subject: str | None, forwarded_for: str | None,
               remote_addr: str | None) -> str:
    """Whose bucket: "user:<subject>" when authenticated, else "ip:<client_ip>", with IPv6 keyed
    by its /64 (one host usually owns a whole /64 and could rotate through it). Without a usable
    address, one shared "ip:unknown" bucket, so a malformed header never escapes limiting.
    """
    if principal_subject:
        return f"user:{principal_subject}"
    address = client_ip(forwarded_for, remote_addr)
    if address is None:
        return "ip:unknown"
    if ":" in address:
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def _float8(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):  # nan/inf would make every later decision meaningless
        raise ValueError(f"not a finite number: {value!r}")
    return f"float8 '{number!r}'"


def _ceil(seconds: float) -> int:
    return max(0, math.ceil(seconds - _EPSILON))
