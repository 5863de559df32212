"""Reward claims: evaluate, grant exactly once, approve or reject, and the audit trail.

A grant is one transaction: the claim row, its ledger entries (double entry: the user's
account credited, the event's debited), the `rewards.granted` event (outbox), the stored
Idempotency-Key response, and last the budget decrement. Exactly once rests on constraints:

- a claim holding a slot has `seq` unique per (event, user) and at most the event's per-user
  limit; concurrent claims for the same slot meet at that unique index (the loser waits for
  the winner's commit, then takes the next slot or is refused);
- budgets move only by `UPDATE ... WHERE remaining >= quantity` (a row lock, then a check);
  when one cannot pay, the whole grant rolls back and the refusal is recorded on its own;
- ledger rows are unique per (claim, reward, account), so an approval replay adds nothing.

Every attempt leaves a row: granted, pending (awaiting an operator), refused (with reasons),
or rejected (by an operator).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import errors, reward_events, rewards
from shared.events import Envelope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.outbox import OutboxTransaction

REWARDS_TOPIC = "rewards.granted"
STATUSES = ("granted", "pending", "rejected", "refused")
_COLUMNS = ("id, event_id, user_id, seq, status, reasons, rewards, created_at, decided_at, "
            "decided_by, note")
TransactionFactory = Callable[[], AbstractContextManager["OutboxTransaction"]]


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def view(row: Any) -> dict[str, Any]:
    (cid, event, user, seq, status, reasons, granted, created, decided, decided_by, note) = row
    return {"id": str(cid), "event_id": str(event), "user_id": str(user), "seq": seq,
            "status": status, "reasons": reasons, "rewards": granted,
            "created_at": created.isoformat(),
            "decided_at": decided.isoformat() if decided else None,
            "decided_by": str(decided_by) if decided_by else None, "note": note}


class ClaimRefused(errors.AppError):
    status, code, title = 409, "claim_refused", "Claim refused"


@dataclass(frozen=True)
class Idempotency:
    scope: str
    key: str


@dataclass(frozen=True)
class _Refusal:
    reasons: list[dict[str, Any]]
    error: type[errors.AppError] = ClaimRefused
    code: str = "claim_refused"
    detail: str = "the claim does not meet the event's rules"


class _BudgetShort(errors.AppError):
    """Raised inside the grant transaction to roll it back: a budget cannot pay. (An AppError,
    so the pooled connection is kept: db.transaction discards it on unexpected errors.)"""

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        super().__init__("budget exhausted")
        self.reasons = reasons


def _record(conn: Connection, event_id: str, user_id: str, reasons: list[dict[str, Any]],
            key: str | None) -> str:
    claim_id = str(uuid.uuid4())
    conn.execute(_sql(
        "INSERT INTO reward_claims (id, event_id, user_id, status, reasons, idempotency_key) "
        "VALUES (:id, :e, :u, 'refused', CAST(:r AS jsonb), :k)"),
        {"id": claim_id, "e": event_id, "u": user_id, "r": json.dumps(reasons), "k": key})
    return claim_id


def _raise(refusal: _Refusal, claim_id: str) -> None:
    raise refusal.error(refusal.detail, code=refusal.code, reasons=refusal.reasons,
                        claim_id=claim_id)


def _default_transaction() -> AbstractContextManager[OutboxTransaction]:
    from shared import outbox

    return outbox.transaction()


def claim(user_id: str, event_id: str, idem: Idempotency | None,
          transaction: TransactionFactory = _default_transaction) -> tuple[int, dict[str, Any]]:
    """Claim the event's rewards: (201, granted claim) or (202, pending claim); refusals are
    recorded, then raised (409 `claim_refused` with `reasons`, 403 for blocked accounts)."""
    from shared import db

    key = idem.key if idem else None
    try:
        with transaction() as tx:
            outcome = _claim(tx, user_id, event_id, idem)
            if isinstance(outcome, tuple):
                return outcome
            claim_id = _record(tx.conn, event_id, user_id, outcome.reasons, key)
    except _BudgetShort as short:
        outcome = _Refusal(short.reasons)
        with db.transaction() as conn:
            claim_id = _record(conn, event_id, user_id, outcome.reasons, key)
    _raise(outcome, claim_id)
    raise AssertionError("unreachable")


def _claim(tx: OutboxTransaction, user_id: str, event_id: str, idem: Idempotency | None
           ) -> tuple[int, dict[str, Any]] | _Refusal:
    conn = tx.conn
    context = reward_events.claim_context(conn, event_id, user_id)
    if context is None or context.event.status == "draft":
        raise errors.NotFound("no such event", code="event_not_found")
    event, now = context.event, context.now
    if context.blocked_status is not None:
        return _Refusal([{"condition": "account_status", "current": context.blocked_status,
                          "required": "active"}], errors.Forbidden,
                        f"account_{context.blocked_status}", "this account may not claim rewards")
    reasons = rewards.window_reasons(event.status, event.starts_at, event.ends_at, now)
    if not reasons:
        reasons = rewards.unmet(event.conditions, context.progress)
    if reasons:
        return _Refusal(reasons)
    status = "pending" if event.requires_approval else "granted"
    specs = event.reward_specs()
    first = context.claims_so_far + 1  # usually free; slots a rejection freed come after
    for seq in [*range(first, event.claim_limit + 1), *range(1, min(first, event.claim_limit + 1))]:
        granted = rewards.rewards_for_claim(specs, seq)
        done = _grant(tx, event, user_id, seq, status, granted, idem, now)
        if done is not None:
            return done
        # A concurrent claim took this slot (the insert waited for its commit): the next one.
    return _Refusal([{"condition": "per_user_limit", "current": event.claim_limit,
                      "required": event.claim_limit}])


def _granted_view(granted: list[tuple[str, rewards.Reward]]) -> list[dict[str, Any]]:
    return [{"reward_id": rid, "type": r.kind, "name": r.name, "quantity": r.quantity,
             "budgeted": r.budget is not None} for rid, r in granted]


def _grant(tx: OutboxTransaction, event: reward_events.Event, user_id: str, seq: int,
           status: str, granted: list[tuple[str, rewards.Reward]], idem: Idempotency | None,
           now: datetime) -> tuple[int, dict[str, Any]] | None:
    """Take slot `seq` and, only if it was free, in the same statement: the ledger entries,
    the `rewards.granted` outbox row, the stored Idempotency-Key response and the budget
    decrement. None when the slot was taken. One statement (writable CTEs, each gated on the
    claim row existing) keeps the claim's round trips, and the budget row lock, short."""
    from shared import outbox

    claim_id = str(uuid.uuid4())
    view_rewards = _granted_view(granted)
    code = 201 if status == "granted" else 202
    body = {"claim": {"id": claim_id, "event_id": event.id, "user_id": user_id, "seq": seq,
                      "status": status, "reasons": [], "rewards": view_rewards,
                      "created_at": now.isoformat(), "decided_at": None, "decided_by": None,
                      "note": None}}
    params: dict[str, Any] = {
        "id": claim_id, "e": event.id, "u": user_id, "seq": seq, "status": status,
        "rewards": json.dumps(view_rewards), "k": idem.key if idem else None}
    ctes = ["claim AS (INSERT INTO reward_claims (id, event_id, user_id, seq, status, rewards, "
            "idempotency_key) VALUES (:id, :e, :u, :seq, :status, CAST(:rewards AS jsonb), :k) "
            "ON CONFLICT (event_id, user_id, seq) DO NOTHING RETURNING id)"]
    selects = ["(SELECT id FROM claim)"]
    if status == "granted" and granted:
        ledger, ledger_params = _ledger_values(event, user_id, granted)
        ctes.append("ledger AS (INSERT INTO reward_ledger (claim_id, reward_id, account, asset, "
                    "amount) SELECT claim.id, v.r, v.a, v.asset, v.n FROM claim, "
                    f"(VALUES {ledger}) AS v(r, a, asset, n) RETURNING 1)")
        params |= ledger_params
        envelope = Envelope("rewards.granted", {
            "claim_id": claim_id, "user_id": user_id, "event_id": event.id,
            "event_title": event.title, "rewards": view_rewards})
        # The row id joins the transaction's publish after commit.
        announced = outbox.pending(REWARDS_TOPIC, envelope)
        ctes.append(f"events AS ({outbox.INSERT} WHERE EXISTS (SELECT 1 FROM claim) "
                    "RETURNING id)")
        selects.append("(SELECT id FROM events)")
        params |= outbox.outbox_params(envelope, announced)
    if idem is not None:
        # As idempotency.complete stores it: the answer commits with the grant.
        ctes.append("stored AS (UPDATE idempotency_keys SET status = 'completed', "
                    "response_status = :code, response_body = CAST(:body AS jsonb) "
                    "WHERE scope = :scope AND key = :k AND EXISTS (SELECT 1 FROM claim) "
                    "RETURNING 1)")
        params |= {"code": code, "body": json.dumps(body, default=str), "scope": idem.scope}
    budgeted = {rid: r.quantity for rid, r in granted if r.budget is not None}
    if budgeted:
        # Conditional: a budget that cannot pay is not touched, and the grant rolls back.
        ctes.append("budget AS (UPDATE event_rewards SET remaining = remaining - quantity "
                    "WHERE id = ANY(CAST(:budgeted AS uuid[])) AND remaining >= quantity "
                    "AND EXISTS (SELECT 1 FROM claim) RETURNING id)")
        selects.append("(SELECT array_agg(CAST(id AS text)) FROM budget)")
        params["budgeted"] = list(budgeted)
    row = tx.conn.execute(_sql(f"WITH {', '.join(ctes)} SELECT {', '.join(selects)}"),
                          params).one()
    if row[0] is None:
        return None
    if status == "granted" and granted:
        tx.track(announced.stored(int(row[1])))
    short = sorted(set(budgeted) - set(row[-1] or ())) if budgeted else []
    if short:
        raise _BudgetShort([{"condition": "budget", "reward_id": rid, "current": 0,
                             "required": budgeted[rid]} for rid in short])
    return code, body


def _ledger_values(event: reward_events.Event, user_id: str,
                   granted: list[tuple[str, rewards.Reward]]) -> tuple[str, dict[str, Any]]:
    """Double entry: per reward, the user's account credited and the event's debited."""
    values: list[str] = []
    params: dict[str, Any] = {"user_acct": f"user:{user_id}", "event_acct": f"event:{event.id}"}
    for i, (rid, reward) in enumerate(granted):
        values += [f"(CAST(:r{i} AS uuid), :user_acct, :a{i}, CAST(:n{i} AS bigint))",
                   f"(CAST(:r{i} AS uuid), :event_acct, :a{i}, -CAST(:n{i} AS bigint))"]
        params |= {f"r{i}": rid, f"a{i}": reward.asset, f"n{i}": reward.quantity}
    return ", ".join(values), params


def _pay(tx: OutboxTransaction, claim_id: str, event: reward_events.Event, user_id: str,
         granted: list[tuple[str, rewards.Reward]]) -> None:
    """Ledger entries and `rewards.granted` for an approved claim (replays add nothing: the
    entries are unique per claim, reward and account)."""
    if granted:
        values, params = _ledger_values(event, user_id, granted)
        tx.conn.execute(_sql(
            "INSERT INTO reward_ledger (claim_id, reward_id, account, asset, amount) "
            f"SELECT CAST(:c AS uuid), v.r, v.a, v.asset, v.n FROM (VALUES {values}) "
            "AS v(r, a, asset, n) ON CONFLICT (claim_id, reward_id, account) DO NOTHING"),
            params | {"c": claim_id})
    tx.emit(REWARDS_TOPIC, Envelope("rewards.granted", {
        "claim_id": claim_id, "user_id": user_id, "event_id": event.id,
        "event_title": event.title, "rewards": _granted_view(granted)}))


# --- operators ------------------------------------------------------------------------------


def _load_claim(conn: Connection, claim_id: str) -> Any:
    return conn.execute(_sql(f"SELECT {_COLUMNS} FROM reward_claims WHERE id = CAST(:id AS uuid)"),
                        {"id": claim_id}).first()


def approve(tx: OutboxTransaction, claim_id: str, operator: str, note: str | None
            ) -> dict[str, Any]:
    """Grant a pending claim, exactly once (a conditional UPDATE); approving a granted claim
    again answers it unchanged."""
    conn = tx.conn
    row = conn.execute(_sql(
        f"UPDATE reward_claims SET status = 'granted', decided_at = now(), decided_by = :op, "
        f"note = :note WHERE id = CAST(:id AS uuid) AND status = 'pending' RETURNING {_COLUMNS}"),
        {"id": claim_id, "op": operator, "note": note}).first()
    if row is None:
        return _already_decided(conn, claim_id, "granted")
    claim_view = view(row)
    event = reward_events.load(conn, claim_view["event_id"])
    assert event is not None
    specs = dict(event.reward_specs())
    granted = [(g["reward_id"], specs[g["reward_id"]]) for g in claim_view["rewards"]]
    _pay(tx, claim_id, event, claim_view["user_id"], granted)
    return claim_view


def reject(conn: Connection, claim_id: str, operator: str, note: str | None) -> dict[str, Any]:
    """Reject a pending claim: its slot and the budget it reserved are released."""
    row = conn.execute(_sql(
        f"UPDATE reward_claims SET status = 'rejected', seq = NULL, decided_at = now(), "
        f"decided_by = :op, note = :note WHERE id = CAST(:id AS uuid) AND status = 'pending' "
        f"RETURNING {_COLUMNS}"), {"id": claim_id, "op": operator, "note": note}).first()
    if row is None:
        return _already_decided(conn, claim_id, "rejected")
    claim_view = view(row)
    budgeted = [g["reward_id"] for g in claim_view["rewards"] if g["budgeted"]]
    if budgeted:
        conn.execute(_sql("UPDATE event_rewards SET remaining = remaining + quantity "
                          "WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": budgeted})
    return claim_view


def _already_decided(conn: Connection, claim_id: str, wanted: str) -> dict[str, Any]:
    row = _load_claim(conn, claim_id)
    if row is None:
        raise errors.NotFound("no such claim", code="claim_not_found")
    if row[4] == wanted:
        return view(row)
    raise errors.Conflict(f"the claim is {row[4]}, not pending", code="claim_not_pending",
                          claim_status=row[4])


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    user_id: str | None = None
    event_id: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[list[str], dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for column, value in (("user_id", self.user_id), ("event_id", self.event_id)):
            if value is not None:
                clauses.append(f"{column} = CAST(:{column} AS uuid)")
                params[column] = value
        if self.status is not None:
            clauses.append("status = :status")
            params["status"] = self.status
        if self.since is not None:
            clauses.append("created_at >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("created_at < :until")
            params["until"] = self.until
        return clauses, params


def filters_from(args: dict[str, str], *, user_id: str | None = None) -> Filters:
    """Query filters (400 `invalid_filter` naming the parameter)."""
    from shared.validation import canonical_uuid

    def bad(name: str, what: str) -> errors.BadRequest:
        return errors.BadRequest(f"{name} must be {what}", code="invalid_filter", parameter=name)

    ids: dict[str, str | None] = {}
    for name in ("user_id", "event_id"):
        raw = args.get(name)
        ids[name] = canonical_uuid(raw) if raw else None
        if raw and ids[name] is None:
            raise bad(name, "a UUID")
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        raise bad("status", "one of " + ", ".join(STATUSES))
    times: dict[str, datetime | None] = {}
    for name in ("from", "to"):
        raw = args.get(name)
        try:
            times[name] = rewards.parse_time(raw, name) if raw else None
        except errors.ValidationFailed:
            raise bad(name, "an RFC 3339 date-time with an offset") from None
    return Filters(user_id or ids["user_id"], ids["event_id"], status, times["from"],
                   times["to"])


def search(conn: Connection, filters: Filters, limit: int, position: dict[str, Any] | None
           ) -> list[dict[str, Any]]:
    """Claims matching the filters, newest first; `limit` rows after `position`."""
    clauses, params = filters.where()
    if position:
        clauses.append("(created_at, id) < (CAST(:k AS timestamptz), CAST(:pid AS uuid))")
        params |= {"k": position.get("k"), "pid": position.get("id")}
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(_sql(f"SELECT {_COLUMNS} FROM reward_claims {where} "
                             "ORDER BY created_at DESC, id DESC LIMIT :limit"),
                        params | {"limit": limit}).all()
    return [view(r) for r in rows]


def page_of(conn: Connection, filters: Filters, request: Any, secret: str) -> dict[str, Any]:
    from shared.pagination import page

    items = search(conn, filters, request.limit + 1, request.position)
    return page(items, request, secret, key=lambda c: {"k": c["created_at"], "id": c["id"]})


CSV_COLUMNS = ("id", "event_id", "user_id", "status", "seq", "reasons", "rewards",
               "created_at", "decided_at", "decided_by", "note")
CSV_CHUNK = 500


def export_csv(filters: Filters, chunk: int = CSV_CHUNK) -> Iterator[str]:
    """The matching claims as CSV, fetched `chunk` rows at a time (each chunk its own short
    transaction), so a large export streams in constant memory without holding a connection."""
    import csv
    import io

    from shared import db

    def encode(values: list[Any]) -> str:
        out = io.StringIO()
        csv.writer(out).writerow(values)
        return out.getvalue()

    yield encode(list(CSV_COLUMNS))
    position: dict[str, Any] | None = None
    while True:
        with db.transaction() as conn:
            items = search(conn, filters, chunk, position)
        for item in items:
            yield encode([_cell(item[c]) for c in CSV_COLUMNS])
        if len(items) < chunk:
            return
        position = {"k": items[-1]["created_at"], "id": items[-1]["id"]}


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # spreadsheet formula injection (notes are free text)
    return "" if value is None else value


def wallet(conn: Connection, user_id: str) -> dict[str, Any]:
    """Points, items and coupons from the ledger (the user's account's balances)."""
    rows = conn.execute(_sql(
        "SELECT asset, sum(amount) FROM reward_ledger WHERE account = :a GROUP BY asset "
        "HAVING sum(amount) <> 0 ORDER BY asset"), {"a": f"user:{user_id}"}).all()
    out: dict[str, Any] = {"points": 0, "items": [], "coupons": []}
    for asset, amount in rows:
        kind, _, name = str(asset).partition(":")
        if kind == "points":
            out["points"] = int(amount)
        else:
            out[f"{kind}s"].append({"name": name, "quantity": int(amount)})
    return out
