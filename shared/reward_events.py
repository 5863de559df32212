"""Reward events: operators define them (conditions, rewards, budgets); users read the active
ones with their own progress. Progress is derived from activity facts inside the event's
window, so it is the same whatever order the facts arrived in."""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from shared import errors, rewards
from shared.pagination import PageRequest, page
from shared.rewards import Reward

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

STATUSES = ("draft", "active", "ended")
# Fields a PATCH may change; conditions and rewards are fixed once an event exists (claims
# already granted were judged against them).
PATCHABLE = ("title", "description", "starts_at", "ends_at", "status", "requires_approval")
_COLUMNS = ("e.id, e.title, e.description, e.starts_at, e.ends_at, e.time_zone, "
            "e.reset_hour, e.status, e.requires_approval, e.conditions, e.claim_limit, "
            "e.created_at, e.updated_at, "
            "(SELECT coalesce(json_agg(json_build_object('id', r.id, 'type', r.kind, "
            "'name', r.name, 'quantity', r.quantity, 'per_user_limit', r.per_user_limit, "
            "'budget', r.budget, 'remaining', r.remaining) ORDER BY r.position), '[]') "
            "FROM event_rewards r WHERE r.event_id = e.id)")
_SELECT = f"SELECT {_COLUMNS} FROM reward_events e"
# Everything a claim decision needs, in one round trip: the event, the database's clock, the
# user's claim block (if any), their claims so far, and their activity in the event's window
# (totals per kind, and the event-local days with a login).
_CLAIM_CONTEXT = (
    f"SELECT {_COLUMNS}, now(), "
    "(SELECT a.status FROM account_restrictions a WHERE a.user_id = CAST(:u AS uuid) "
    "AND a.claims_blocked), "
    "(SELECT count(*) FROM reward_claims c WHERE c.event_id = e.id "
    "AND c.user_id = CAST(:u AS uuid) AND c.seq IS NOT NULL), "
    "(SELECT coalesce(json_agg(json_build_array(p.kind, p.total, p.days)), '[]') FROM ("
    "SELECT f.kind, sum(f.amount) AS total, array_agg(DISTINCT ((f.occurred_at AT TIME ZONE "
    "e.time_zone) - make_interval(hours => e.reset_hour))::date::text) "
    "FILTER (WHERE f.kind = 'login') AS days FROM activity_facts f "
    "WHERE f.user_id = CAST(:u AS uuid) AND f.occurred_at >= e.starts_at "
    "AND f.occurred_at < e.ends_at GROUP BY f.kind) p) "
    "FROM reward_events e WHERE e.id = CAST(:id AS uuid)")


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


@dataclass(frozen=True)
class Event:
    id: str
    title: str
    description: str
    starts_at: datetime
    ends_at: datetime
    time_zone: str
    reset_hour: int
    status: str
    requires_approval: bool
    conditions: tuple[rewards.Condition, ...]
    claim_limit: int
    created_at: datetime
    updated_at: datetime
    rewards: tuple[dict[str, Any], ...]

    def reward_specs(self) -> list[tuple[str, Reward]]:
        return [(r["id"], Reward(r["type"], r["name"], r["quantity"], r["per_user_limit"],
                                 r["budget"]))
                for r in self.rewards]

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "description": self.description,
                "starts_at": self.starts_at.isoformat(), "ends_at": self.ends_at.isoformat(),
                "time_zone": self.time_zone, "reset_hour": self.reset_hour,
                "status": self.status, "requires_approval": self.requires_approval,
                "conditions": [c.view() for c in self.conditions],
                "rewards": list(self.rewards), "claim_limit": self.claim_limit,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat()}


def _event(row: Any) -> Event:
    conditions = tuple(rewards.Condition(c["type"], c["min"], c.get("name", ""))
                       for c in row[9])
    return Event(str(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                 conditions, row[10], row[11], row[12],
                 tuple(r | {"id": str(r["id"])} for r in row[13]))


def load(conn: Connection, event_id: str, *, for_update: bool = False) -> Event | None:
    row = conn.execute(_sql(f"{_SELECT} WHERE e.id = CAST(:id AS uuid)"
                            + (" FOR UPDATE OF e" if for_update else "")),
                       {"id": event_id}).first()
    return _event(row) if row is not None else None


def create(conn: Connection, creator: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create an event with its conditions and rewards (validated: 422 naming the field)."""
    conditions = rewards.parse_conditions(body.get("conditions", []))
    specs = rewards.parse_rewards(body.get("rewards", []))
    starts = rewards.parse_time(body["starts_at"], "starts_at")
    ends = rewards.parse_time(body["ends_at"], "ends_at")
    if ends <= starts:
        raise errors.ValidationFailed("event is invalid", errors=[
            {"field": "ends_at", "message": "must be after starts_at"}])
    time_zone = body.get("time_zone", "Etc/UTC")
    rewards.zone(time_zone)
    # The database computes event days too: the zone must be in its time zone data as well.
    if not conn.execute(_sql("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = :tz)"),
                        {"tz": time_zone}).scalar_one():
        raise errors.ValidationFailed("event is invalid", errors=[
            {"field": "time_zone", "message": "is not a time zone the database knows"}])
    title = body["title"].strip()
    if not title:
        raise errors.ValidationFailed("event is invalid", errors=[
            {"field": "title", "message": "must not be blank"}])
    event_id = str(uuid.uuid4())
    conn.execute(_sql(
        "INSERT INTO reward_events (id, title, description, starts_at, ends_at, time_zone, "
        "reset_hour, status, requires_approval, conditions, claim_limit, created_by) VALUES "
        "(:id, :title, :description, :starts, :ends, :tz, :reset, :status, :approval, "
        "CAST(:conditions AS jsonb), :limit, :creator)"),
        {"id": event_id, "title": title, "description": body.get("description", ""),
         "starts": starts, "ends": ends, "tz": time_zone, "reset": body.get("reset_hour", 0),
         "status": body.get("status", "draft"),
         "approval": body.get("requires_approval", False),
         "conditions": json.dumps([c.view() for c in conditions]),
         "limit": max(r.per_user_limit for r in specs), "creator": creator})
    conn.execute(_sql(
        "INSERT INTO event_rewards (id, event_id, position, kind, name, quantity, "
        "per_user_limit, budget, remaining) VALUES (:id, :event, :pos, :kind, :name, :qty, "
        ":limit, :budget, :budget)"),
        [{"id": str(uuid.uuid4()), "event": event_id, "pos": i, "kind": r.kind,
          "name": r.name, "qty": r.quantity, "limit": r.per_user_limit, "budget": r.budget}
         for i, r in enumerate(specs)])
    event = load(conn, event_id)
    assert event is not None
    return event.view()


def update(conn: Connection, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
    event = load(conn, event_id, for_update=True)
    if event is None:
        raise errors.NotFound("no such event", code="event_not_found")
    values: dict[str, Any] = {k: body[k] for k in PATCHABLE if k in body}
    for name in ("starts_at", "ends_at"):
        if name in values:
            values[name] = rewards.parse_time(values[name], name)
    if "title" in values:
        values["title"] = values["title"].strip()
        if not values["title"]:
            raise errors.ValidationFailed("event is invalid", errors=[
                {"field": "title", "message": "must not be blank"}])
    if values.get("ends_at", event.ends_at) <= values.get("starts_at", event.starts_at):
        raise errors.ValidationFailed("event is invalid", errors=[
            {"field": "ends_at", "message": "must be after starts_at"}])
    if values:
        assignments = ", ".join(f"{c} = :{c}" for c in values)
        conn.execute(_sql(f"UPDATE reward_events SET {assignments}, updated_at = now() "
                          "WHERE id = CAST(:id AS uuid)"), values | {"id": event_id})
    updated = load(conn, event_id)
    assert updated is not None
    return updated.view()


def progress(conn: Connection, user_id: str, event: Event, now: datetime) -> rewards.Progress:
    """The user's activity inside the event's window: totals per fact kind, and the event-local
    days with a login (for streaks)."""
    kinds = sorted({c.kind for c in event.conditions})
    if not kinds:
        return rewards.Progress({}, frozenset(), rewards.event_day(now, rewards.zone(
            event.time_zone), event.reset_hour))
    rows = conn.execute(_sql(
        "SELECT kind, sum(amount), array_agg(DISTINCT ((occurred_at AT TIME ZONE :tz) "
        "- make_interval(hours => :reset))::date::text) FILTER (WHERE kind = 'login') "
        "FROM activity_facts WHERE user_id = CAST(:u AS uuid) AND kind = ANY(:kinds) "
        "AND occurred_at >= :starts AND occurred_at < :ends GROUP BY kind"),
        {"u": user_id, "kinds": kinds, "tz": event.time_zone, "reset": event.reset_hour,
         "starts": event.starts_at, "ends": event.ends_at}).all()
    totals = {str(r[0]): int(r[1]) for r in rows}
    days = frozenset(date.fromisoformat(d) for r in rows if r[2] for d in r[2])
    today = rewards.event_day(min(now, event.ends_at), rewards.zone(event.time_zone),
                              event.reset_hour)
    return rewards.Progress(totals, days, today)


@dataclass(frozen=True)
class ClaimContext:
    event: Event
    now: datetime
    blocked_status: str | None  # the account's status when it may not claim
    claims_so_far: int
    progress: rewards.Progress


def claim_context(conn: Connection, event_id: str, user_id: str) -> ClaimContext | None:
    """The event and the user's standing in it, read in one statement (the claim's hot path)."""
    row = conn.execute(_sql(_CLAIM_CONTEXT), {"id": event_id, "u": user_id}).first()
    if row is None:
        return None
    event = _event(row)
    now, blocked, claimed, facts = row[14], row[15], int(row[16]), row[17]
    totals = {str(kind): int(total) for kind, total, _ in facts}
    days = frozenset(date.fromisoformat(d) for _, _, found in facts if found for d in found)
    today = rewards.event_day(min(now, event.ends_at), rewards.zone(event.time_zone),
                              event.reset_hour)
    return ClaimContext(event, now, blocked, claimed, rewards.Progress(totals, days, today))


def claims_so_far(conn: Connection, user_id: str, event_id: str) -> int:
    return int(conn.execute(_sql(
        "SELECT count(*) FROM reward_claims WHERE event_id = CAST(:e AS uuid) "
        "AND user_id = CAST(:u AS uuid) AND seq IS NOT NULL"),
        {"e": event_id, "u": user_id}).scalar_one())


def view_for(conn: Connection, user_id: str, event: Event, now: datetime) -> dict[str, Any]:
    """The event with the user's progress toward each condition and their claims so far."""
    state = progress(conn, user_id, event, now)
    claimed = claims_so_far(conn, user_id, event.id)
    return event.view() | {"progress": rewards.progress_view(event.conditions, state),
                           "my_claims": claimed,
                           "claimable": not rewards.unmet(event.conditions, state)
                           and claimed < event.claim_limit and not rewards.window_reasons(
                               event.status, event.starts_at, event.ends_at, now)}


def get(conn: Connection, user_id: str, event_id: str, *, staff: bool) -> dict[str, Any]:
    """One event; drafts exist only for operators (others get 404)."""
    event = load(conn, event_id)
    if event is None or (event.status == "draft" and not staff):
        raise errors.NotFound("no such event", code="event_not_found")
    return view_for(conn, user_id, event, _now(conn))


def listing(conn: Connection, user_id: str, request: PageRequest, secret: str, status: str
            ) -> dict[str, Any]:
    """Events of a status (active: those not yet over), soonest ending first."""
    clauses = ["e.status = :status"]
    params: dict[str, Any] = {"status": status, "limit": request.limit + 1}
    if status == "active":
        clauses.append("e.ends_at > now()")
    if request.position:
        clauses.append("(e.ends_at, e.id) > (CAST(:k AS timestamptz), CAST(:id AS uuid))")
        params |= {"k": request.position.get("k"), "id": request.position.get("id")}
    rows = conn.execute(_sql(f"{_SELECT} WHERE {' AND '.join(clauses)} "
                             "ORDER BY e.ends_at, e.id LIMIT :limit"), params).all()
    now = _now(conn)
    items = [view_for(conn, user_id, _event(r), now) for r in rows]
    return page(items, request, secret, key=lambda e: {"k": e["ends_at"], "id": e["id"]})


def _now(conn: Connection) -> datetime:
    """The database's clock: one clock for every instance."""
    return conn.execute(_sql("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def referral_code(conn: Connection, user_id: str) -> str:
    """The user's referral code, created on first request (8 characters, no look-alikes)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    for _ in range(5):
        code = "".join(secrets.choice(alphabet) for _ in range(8))
        conn.execute(_sql("INSERT INTO referral_codes (code, user_id) VALUES (:c, :u) "
                          "ON CONFLICT DO NOTHING"), {"c": code, "u": user_id})
        row = conn.execute(_sql("SELECT code FROM referral_codes WHERE user_id = :u"),
                           {"u": user_id}).first()
        if row is not None:
            return str(row[0])
    raise errors.ServiceUnavailable("could not allocate a referral code; retry",
                                    code="referral_code_busy")
