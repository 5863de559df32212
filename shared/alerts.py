"""Alert rules on the minute rollups (seed 003), evaluated by `rollup` after each run.

Kinds (their parameters, with the defaults of seed 003, in `PARAMS`), each evaluated per
closed minute for every (tenant, service) the rule watches (`tenant`/`service` NULL: all):
- `service_down`: no requests in the minute where traffic was expected: the service had
  requests in each of the `expected_minutes` minutes before. Once pending or firing it holds
  for as long as the service has no requests.
- `error_rate`: errors / requests of the minute above `threshold` (a fraction), with at least
  `min_requests` requests.
- `latency`: the `quantile` (p95 by default) of the minute's latency above `threshold`
  milliseconds, from the merged sketches of every operation and environment of the service in
  that minute (never an average of percentiles).
- `traffic_spike`: the minute's requests above `multiplier` x the mean requests per minute of
  the `baseline_minutes` minutes before (minutes without requests count as 0), with at least
  `min_requests` requests and traffic in at least half of the baseline minutes (a service that
  just appeared has no baseline).

State machine (`advance`, pure): ok -> pending when the condition holds; pending -> firing once
it has held for `for_minutes` consecutive minutes (a rule with `for_minutes` 1 goes ok ->
pending -> firing in one minute, two transitions); pending -> ok when it stops holding before
that; firing -> resolved when it stops holding; resolved -> ok, or -> pending when it holds
again. Every transition is one `alert.transition` event on `telemetry.alerts`, written through
the outbox in the evaluation's transaction; receivers notify on pending -> firing and
firing -> resolved only, so a firing rule notifies once, not every minute.

Minutes are evaluated one by one, in order, from the one after the last evaluated (the
`alerts` row of `rollup_state`) to the last one rolled up, so a catch-up run makes the same
transitions as live runs would have. The first evaluation ever starts at the newest rolled-up
minute (history is not replayed into alerts). Idempotent: a state row remembers the last
minute it was evaluated for and is never evaluated again for that minute or an earlier one; a
duplicate tick finds no new minute. Event ids are derived from (rule, tenant, service, minute,
transition), so even a redelivered event carries the same id. A minute is evaluated once, when
first rolled up: spans arriving later (within the rollup's lateness allowance) correct the
rollups but do not re-evaluate alerts.

Changing a rule's kind, scope, parameters or enabling resets its states (they start from ok;
no event is sent for states dropped that way). Disabled rules are not evaluated.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import errors
from shared.events import Envelope
from shared.rollup import MINUTE, floor_minute
from shared.rollup import STATE as ROLLUP_STATE
from shared.sketch import LatencySketch

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.outbox import OutboxTransaction

TOPIC = "telemetry.alerts"
EVENT_TYPE = "alert.transition"
CURSOR = "alerts"  # rollup_state row: the last minute evaluated
MAX_MINUTES = 180  # minutes evaluated by one run at most (the rest by the next runs)
STATES = ("ok", "pending", "firing", "resolved")
KINDS = ("service_down", "error_rate", "latency", "traffic_spike")
ACTIVE = ("pending", "firing")
_LOCK = "telemetry_alerts"
_EVENTS = uuid.UUID("6f0d3c1e-8a53-4d6b-9a55-3b7f1f0a1e00")  # uuid5 namespace of event ids


@dataclass(frozen=True)
class Param:
    default: float
    minimum: float
    maximum: float
    integer: bool = False


_FOR = Param(1, 1, 60, integer=True)
_MIN_REQUESTS = Param(10, 1, 1e9, integer=True)
PARAMS: dict[str, dict[str, Param]] = {
    "service_down": {"for_minutes": _FOR, "expected_minutes": Param(5, 1, 60, integer=True)},
    "error_rate": {"threshold": Param(0.05, 0, 1), "for_minutes": Param(2, 1, 60, integer=True),
                   "min_requests": _MIN_REQUESTS},
    "latency": {"threshold": Param(2000, 0, 86_400_000), "quantile": Param(0.95, 0, 1),
                "for_minutes": Param(5, 1, 60, integer=True),
                "min_requests": Param(1, 1, 1e9, integer=True)},
    "traffic_spike": {"multiplier": Param(3, 1, 1000),
                      "baseline_minutes": Param(30, 2, MAX_MINUTES, integer=True),
                      "for_minutes": Param(2, 1, 60, integer=True),
                      "min_requests": _MIN_REQUESTS},
}


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


# --- rules -----------------------------------------------------------------------------------


def normalize_params(kind: str, given: Mapping[str, Any]) -> dict[str, float | int]:
    """The parameters of a rule of `kind`: its defaults overridden by `given`, every value
    checked (422 listing each problem)."""
    spec = PARAMS[kind]
    problems = [{"field": f"params.{name}", "message": f"is not a parameter of {kind}"}
                for name in given if name not in spec]
    out: dict[str, float | int] = {}
    for name, param in spec.items():
        value = given.get(name, param.default)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            problems.append({"field": f"params.{name}", "message": "must be a number"})
            continue
        if param.integer and value != int(value):
            problems.append({"field": f"params.{name}", "message": "must be a whole number"})
            continue
        if not param.minimum <= value <= param.maximum:
            problems.append({"field": f"params.{name}", "message":
                             f"must be from {param.minimum:g} to {param.maximum:g}"})
            continue
        out[name] = int(value) if param.integer else float(value)
    if problems:
        raise errors.ValidationFailed("invalid rule parameters", errors=problems)
    return out


@dataclass(frozen=True)
class Rule:
    id: str
    tenant: str | None
    name: str
    kind: str
    service: str | None
    params: dict[str, Any]

    @property
    def for_minutes(self) -> int:
        return int(self.params.get("for_minutes", PARAMS[self.kind]["for_minutes"].default))

    def param(self, name: str) -> float:
        return float(self.params.get(name, PARAMS[self.kind][name].default))

    @property
    def lookback(self) -> int:
        """Minutes before the evaluated one the condition reads."""
        if self.kind == "service_down":
            return int(self.param("expected_minutes"))
        if self.kind == "traffic_spike":
            return int(self.param("baseline_minutes"))
        return 0

    def watches(self, tenant: str, service: str) -> bool:
        return self.tenant in (None, tenant) and self.service in (None, service)


# --- the pure part: conditions and the state machine -----------------------------------------


@dataclass(frozen=True)
class Traffic:
    """A service's requests in the evaluated minute (`sketch`: its merged latency sketch, when
    the rule needs it) and in the minutes before it (`before`, oldest first)."""

    requests: int
    errors: int
    before: Sequence[int] = ()
    sketch: LatencySketch | None = None


@dataclass(frozen=True)
class Measure:
    holds: bool
    value: float | None
    threshold: float | None


def measure(rule: Rule, state: str, traffic: Traffic) -> Measure:
    """Whether the rule's condition holds for the minute, with the value it compared."""
    requests = traffic.requests
    if rule.kind == "service_down":
        wanted = int(rule.param("expected_minutes"))
        before = list(traffic.before)[-wanted:]
        expected = len(before) == wanted and all(count > 0 for count in before)
        return Measure(requests == 0 and (state in ACTIVE or expected), float(requests), None)
    enough = requests >= rule.param("min_requests")
    if rule.kind == "error_rate":
        threshold = rule.param("threshold")
        rate = traffic.errors / requests if requests else None
        return Measure(enough and rate is not None and rate > threshold, rate, threshold)
    if rule.kind == "latency":
        threshold = rule.param("threshold")
        nanos = traffic.sketch.quantile(rule.param("quantile")) if traffic.sketch else None
        millis = nanos / 1e6 if nanos is not None and requests else None
        return Measure(enough and millis is not None and millis > threshold, millis, threshold)
    if rule.kind == "traffic_spike":
        minutes = int(rule.param("baseline_minutes"))
        before = list(traffic.before)[-minutes:]
        baseline = sum(before) / minutes
        limit = rule.param("multiplier") * baseline
        covered = 2 * sum(1 for count in before if count > 0) >= minutes
        return Measure(enough and covered and requests > limit, float(requests), limit)
    raise ValueError(f"unknown rule kind {rule.kind!r}")


@dataclass(frozen=True)
class Phase:
    """Where a (rule, tenant, service) is: its state and the first minute of the current
    episode (the condition's first holding minute; None when ok)."""

    state: str = "ok"
    started_at: datetime | None = None


Transition = tuple[str, str]  # (from, to)


def advance(phase: Phase, holds: bool, minute: datetime, for_minutes: int
            ) -> tuple[Phase, list[Transition]]:
    """The next phase after evaluating `minute`, and the transitions taken to get there."""
    state = phase.state
    if holds:
        transitions: list[Transition] = []
        started = phase.started_at if state in ACTIVE and phase.started_at else minute
        if state in ("ok", "resolved"):
            transitions.append((state, "pending"))
            state, started = "pending", minute
        held = (minute - started) // MINUTE + 1
        if state == "pending" and held >= for_minutes:
            transitions.append(("pending", "firing"))
            state = "firing"
        return Phase(state, started), transitions
    if state == "pending":
        return Phase("ok"), [("pending", "ok")]
    if state == "firing":
        return Phase("resolved", phase.started_at), [("firing", "resolved")]
    if state == "resolved":
        return Phase("ok"), [("resolved", "ok")]
    return phase, []


def summary(rule: Rule, tenant: str, service: str, to: str, result: Measure) -> str:
    where = f"{service}" + (f" (tenant {tenant})" if tenant else "")
    value, threshold = result.value, result.threshold
    if rule.kind == "service_down":
        detail = ("no requests in the minute" if not value
                  else f"{value:g} requests in the minute")
    elif value is None:
        detail = "no requests in the minute"
    elif rule.kind == "error_rate":
        detail = f"error rate {value:.1%} (threshold {threshold or 0:.1%})"
    elif rule.kind == "latency":
        detail = (f"p{rule.param('quantile') * 100:g} latency {value:.0f} ms "
                  f"(threshold {threshold or 0:g} ms)")
    else:
        detail = (f"{value:g} requests in the minute (threshold {threshold or 0:.1f}: "
                  f"{rule.param('multiplier'):g}x the {rule.lookback}-minute baseline)")
    return f"[{to}] {rule.name} on {where}: {detail}"


def event(rule: Rule, tenant: str, service: str, minute: datetime, transition: Transition,
          result: Measure, started_at: datetime | None) -> Envelope:
    """The `alert.transition` envelope; its id is the same whenever it is made again."""
    source, target = transition
    key = f"{rule.id}|{tenant}|{service}|{iso(minute)}|{source}|{target}"
    return Envelope(EVENT_TYPE, {
        "rule_id": rule.id, "rule_name": rule.name, "kind": rule.kind, "tenant": tenant,
        "service": service, "from": source, "to": target, "minute": iso(minute),
        "value": result.value, "threshold": result.threshold,
        "started_at": iso(started_at) if started_at else None,
        "summary": summary(rule, tenant, service, target, result)},
        id=str(uuid.uuid5(_EVENTS, key)))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- evaluation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult:
    minutes: int  # minutes evaluated
    transitions: int  # events emitted
    skipped: bool = False  # another evaluation held the lock


@dataclass
class _Row:
    phase: Phase
    since: datetime
    last_value: float | None
    evaluated: datetime
    fired_at: datetime | None
    resolved_at: datetime | None


def evaluate(now: datetime | None = None) -> EvaluationResult:
    """Evaluate every minute rolled up since the last evaluation, in its own transaction; the
    transitions are published after it commits."""
    from shared import outbox

    with outbox.transaction() as tx:
        return evaluate_in(tx, now or datetime.now(UTC))


def evaluate_in(tx: OutboxTransaction, now: datetime) -> EvaluationResult:
    conn = tx.conn
    if not conn.execute(_sql("SELECT pg_try_advisory_xact_lock(hashtext(:lock))"),
                        {"lock": _LOCK}).scalar():
        return EvaluationResult(0, 0, skipped=True)
    cursors = dict(conn.execute(_sql(
        "SELECT name, last_minute FROM rollup_state WHERE name IN (:rollup, :alerts)"),
        {"rollup": ROLLUP_STATE, "alerts": CURSOR}).all())
    rolled = cursors.get(ROLLUP_STATE)
    if rolled is None:
        return EvaluationResult(0, 0)
    last = min(rolled.astimezone(UTC), floor_minute(now) - MINUTE)
    done = cursors.get(CURSOR)
    first = last if done is None else done.astimezone(UTC) + MINUTE
    minutes: list[datetime] = []
    while first <= last and len(minutes) < MAX_MINUTES:
        minutes.append(first)
        first += MINUTE
    if not minutes:
        return EvaluationResult(0, 0)
    transitions = evaluate_minutes(tx, minutes)
    conn.execute(_sql(
        "INSERT INTO rollup_state (name, last_minute) VALUES (:name, :minute) "
        "ON CONFLICT (name) DO UPDATE SET last_minute = GREATEST(rollup_state.last_minute, "
        "excluded.last_minute), updated_at = now()"), {"name": CURSOR, "minute": minutes[-1]})
    return EvaluationResult(len(minutes), transitions)


def evaluate_minutes(tx: OutboxTransaction, minutes: Sequence[datetime]) -> int:
    """Evaluate the enabled rules for each minute in order (ascending); emits one event per
    transition through `tx`. State rows already evaluated for a minute are left alone.
    Returns the number of transitions."""
    conn = tx.conn
    rules = _enabled_rules(conn)
    if not rules or not minutes:
        return 0
    lookback = max(rule.lookback for rule in rules)
    counts = _counts(conn, minutes[0] - lookback * MINUTE, minutes[-1])
    rows = _states(conn)
    needs_sketch = any(rule.kind == "latency" for rule in rules)
    emitted = 0
    for minute in minutes:
        sketches = _sketches(conn, minute) if needs_sketch else {}
        changed: list[dict[str, Any]] = []
        for rule in rules:
            for tenant, service in _candidates(rule, minute, counts, rows):
                key = (rule.id, tenant, service)
                row = rows.get(key)
                if row is not None and row.evaluated >= minute:
                    continue  # evaluated already: a replayed minute changes nothing
                series = counts.get((tenant, service), {})
                requests, failed = series.get(minute, (0, 0))
                before = [series.get(minute - n * MINUTE, (0, 0))[0]
                          for n in range(rule.lookback, 0, -1)]
                traffic = Traffic(requests, failed, before,
                                  sketches.get((tenant, service)) if rule.kind == "latency"
                                  else None)
                phase = row.phase if row is not None else Phase()
                result = measure(rule, phase.state, traffic)
                new_phase, transitions = advance(phase, result.holds, minute, rule.for_minutes)
                if row is None and not transitions:
                    continue  # no row until something happens
                if row is None:
                    row = rows[key] = _Row(phase, minute, None, minute, None, None)
                for transition in transitions:
                    tx.emit(TOPIC, event(rule, tenant, service, minute, transition, result,
                                         new_phase.started_at or phase.started_at))
                    emitted += 1
                    if transition[1] == "firing":
                        row.fired_at = minute
                    elif transition[1] == "resolved":
                        row.resolved_at = minute
                if new_phase.state != row.phase.state:
                    row.since = minute
                row.phase, row.last_value, row.evaluated = new_phase, result.value, minute
                changed.append({
                    "rule": rule.id, "tenant": tenant, "service": service,
                    "state": new_phase.state, "since": row.since,
                    "started": new_phase.started_at, "value": result.value, "minute": minute,
                    "fired": row.fired_at, "resolved": row.resolved_at})
        if changed:
            conn.execute(_sql(
                "INSERT INTO alert_states (rule_id, tenant, service, state, since, started_at, "
                "last_value, last_evaluated_minute, fired_at, resolved_at) VALUES "
                "(CAST(:rule AS uuid), :tenant, :service, :state, :since, :started, :value, "
                ":minute, :fired, :resolved) ON CONFLICT (rule_id, tenant, service) DO UPDATE "
                "SET state = excluded.state, since = excluded.since, "
                "started_at = excluded.started_at, last_value = excluded.last_value, "
                "last_evaluated_minute = excluded.last_evaluated_minute, "
                "fired_at = excluded.fired_at, resolved_at = excluded.resolved_at, "
                "updated_at = now()"), changed)
    return emitted


def _candidates(rule: Rule, minute: datetime,
                counts: Mapping[tuple[str, str], Mapping[datetime, tuple[int, int]]],
                rows: Mapping[tuple[str, str, str], _Row]) -> list[tuple[str, str]]:
    """The (tenant, service) pairs the rule evaluates at `minute`: those it watches with
    requests in the minutes it reads, and those whose state is not ok."""
    window = [minute - n * MINUTE for n in range(rule.lookback + 1)]
    found = {pair for pair, series in counts.items()
             if rule.watches(*pair) and any(m in series for m in window)}
    found |= {(tenant, service) for (rule_id, tenant, service), row in rows.items()
              if rule_id == rule.id and row.phase.state != "ok"}
    return sorted(found)


def _enabled_rules(conn: Connection) -> list[Rule]:
    rows = conn.execute(_sql(
        "SELECT id, tenant, name, kind, service, params FROM alert_rules WHERE enabled "
        "ORDER BY created_at, id")).all()
    return [Rule(str(r[0]), r[1], r[2], r[3], r[4], dict(r[5])) for r in rows]


def _counts(conn: Connection, start: datetime, end: datetime
            ) -> dict[tuple[str, str], dict[datetime, tuple[int, int]]]:
    """Requests and errors per (tenant, service) and minute in [start, end]."""
    found: dict[tuple[str, str], dict[datetime, tuple[int, int]]] = {}
    for minute, tenant, service, requests, failed in conn.execute(_sql(
            "SELECT minute, tenant, service, sum(requests), sum(errors) FROM rollups "
            "WHERE minute >= :start AND minute <= :end GROUP BY 1, 2, 3"),
            {"start": start, "end": end}):
        found.setdefault((tenant, service), {})[minute.astimezone(UTC)] = (int(requests),
                                                                          int(failed))
    return found


def _sketches(conn: Connection, minute: datetime) -> dict[tuple[str, str], LatencySketch]:
    """The merged latency sketch of each (tenant, service) in the minute."""
    found: dict[tuple[str, str], LatencySketch] = {}
    for tenant, service, data in conn.execute(_sql(
            "SELECT tenant, service, sketch FROM rollups WHERE minute = :minute"),
            {"minute": minute}):
        sketch = LatencySketch.from_bytes(bytes(data))
        merged = found.get((tenant, service))
        if merged is None:
            found[(tenant, service)] = sketch
        else:
            merged.merge(sketch)
    return found


def _states(conn: Connection) -> dict[tuple[str, str, str], _Row]:
    rows = conn.execute(_sql(
        "SELECT s.rule_id, s.tenant, s.service, s.state, s.started_at, s.since, s.last_value, "
        "s.last_evaluated_minute, s.fired_at, s.resolved_at FROM alert_states s "
        "JOIN alert_rules r ON r.id = s.rule_id WHERE r.enabled")).all()
    return {(str(r[0]), r[1], r[2]): _Row(Phase(r[3], _utc(r[4])), r[5].astimezone(UTC), r[6],
                                          r[7].astimezone(UTC), _utc(r[8]), _utc(r[9]))
            for r in rows}


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment is not None else None


# --- the operator API ----------------------------------------------------------------------------

_RULE_COLUMNS = "id, tenant, name, kind, service, params, enabled, created_at, updated_at"


def rule_view(row: Any) -> dict[str, Any]:
    rule_id, tenant, name, kind, service, params, enabled, created, updated = row
    return {"id": str(rule_id), "tenant": tenant, "name": name, "kind": kind,
            "service": service, "params": dict(params), "enabled": bool(enabled),
            "created_at": iso(created), "updated_at": iso(updated)}


def list_rules(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(_sql(f"SELECT {_RULE_COLUMNS} FROM alert_rules "
                             "ORDER BY created_at, id")).all()
    return [rule_view(r) for r in rows]


def get_rule(conn: Connection, rule_id: str) -> dict[str, Any]:
    row = conn.execute(_sql(f"SELECT {_RULE_COLUMNS} FROM alert_rules "
                            "WHERE id = CAST(:id AS uuid)"), {"id": rule_id}).first()
    if row is None:
        raise errors.NotFound("no such alert rule", code="rule_not_found")
    return rule_view(row)


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise errors.ValidationFailed("name must not be blank", errors=[
            {"field": "name", "message": "must not be blank"}])
    return name


def create_rule(conn: Connection, fields: Mapping[str, Any]) -> dict[str, Any]:
    kind = fields["kind"]
    rule_id = str(uuid.uuid4())
    conn.execute(_sql(
        "INSERT INTO alert_rules (id, tenant, name, kind, service, params, enabled) VALUES "
        "(CAST(:id AS uuid), :tenant, :name, :kind, :service, CAST(:params AS jsonb), "
        ":enabled)"),
        {"id": rule_id, "tenant": fields.get("tenant"), "name": _clean_name(fields["name"]),
         "kind": kind, "service": fields.get("service"),
         "params": json.dumps(normalize_params(kind, fields.get("params") or {})),
         "enabled": fields.get("enabled", True)})
    return get_rule(conn, rule_id)


def update_rule(conn: Connection, rule_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Change the fields sent; `params` are merged into the current ones (all of them start
    from the new kind's defaults when `kind` changes). A change to what the rule evaluates
    resets its states."""
    _exclude_evaluation(conn)
    current = get_rule(conn, rule_id)
    values: dict[str, Any] = {}
    if "name" in fields:
        values["name"] = _clean_name(fields["name"])
    for name in ("tenant", "service", "enabled"):
        if name in fields:
            values[name] = fields[name]
    kind = fields.get("kind", current["kind"])
    if "kind" in fields or "params" in fields:
        base = current["params"] if kind == current["kind"] else {}
        values["kind"] = kind
        values["params"] = normalize_params(kind, base | dict(fields.get("params") or {}))
    evaluated = ("tenant", "service", "enabled", "kind", "params")
    if any(name in values and values[name] != current[name] for name in evaluated):
        conn.execute(_sql("DELETE FROM alert_states WHERE rule_id = CAST(:id AS uuid)"),
                     {"id": rule_id})
    if values:
        params = {k: json.dumps(v) if k == "params" else v for k, v in values.items()}
        assignments = ", ".join(
            f"{k} = CAST(:{k} AS jsonb)" if k == "params" else f"{k} = :{k}" for k in values)
        conn.execute(_sql(f"UPDATE alert_rules SET {assignments}, updated_at = now() "
                          "WHERE id = CAST(:id AS uuid)"), params | {"id": rule_id})
    return get_rule(conn, rule_id)


def _exclude_evaluation(conn: Connection) -> None:
    """Wait for a running evaluation to commit, and keep the next one out until this
    transaction ends (it skips, and the following tick catches up), so states are never
    written from a rule's old definition after it changed."""
    conn.execute(_sql("SELECT pg_advisory_xact_lock(hashtext(:lock))"), {"lock": _LOCK})


def delete_rule(conn: Connection, rule_id: str) -> None:
    """Delete a rule and its states (the defaults too: they are not seeded again)."""
    _exclude_evaluation(conn)
    deleted = conn.execute(_sql("DELETE FROM alert_rules WHERE id = CAST(:id AS uuid)"),
                           {"id": rule_id}).rowcount
    if not deleted:
        raise errors.NotFound("no such alert rule", code="rule_not_found")


def list_states(conn: Connection, *, state: str | None = None, service: str | None = None,
                tenant: str | None = None, rule_id: str | None = None) -> list[dict[str, Any]]:
    """Current states (every state row: a (rule, tenant, service) gets one at its first
    transition), firing first, then pending, resolved, ok."""
    clauses, params = ["true"], {}
    for column, value in (("s.state", state), ("s.service", service), ("s.tenant", tenant)):
        if value is not None:
            clauses.append(f"{column} = :{column[2:]}")
            params[column[2:]] = value
    if rule_id is not None:
        clauses.append("s.rule_id = CAST(:rule_id AS uuid)")
        params["rule_id"] = rule_id
    rows = conn.execute(_sql(
        "SELECT s.rule_id, r.name, r.kind, s.tenant, s.service, s.state, s.since, "
        "s.started_at, s.last_value, s.last_evaluated_minute, s.fired_at, s.resolved_at "
        "FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id "
        f"WHERE {' AND '.join(clauses)} ORDER BY array_position("
        "ARRAY['firing', 'pending', 'resolved', 'ok'], s.state), s.since DESC, r.name, "
        "s.tenant, s.service LIMIT 1000"), params).all()
    return [{"rule_id": str(r[0]), "rule_name": r[1], "kind": r[2], "tenant": r[3],
             "service": r[4], "state": r[5], "since": iso(r[6]),
             "started_at": iso(r[7]) if r[7] else None, "last_value": r[8],
             "last_evaluated_minute": iso(r[9]), "fired_at": iso(r[10]) if r[10] else None,
             "resolved_at": iso(r[11]) if r[11] else None} for r in rows]


def parse_filters(args: Mapping[str, str]) -> dict[str, str | None]:
    """`GET /alerts` filters: state, service, tenant, rule_id (400 when malformed)."""
    from shared.validation import canonical_uuid, clean_string

    state = args.get("state") or None
    if state is not None and state not in STATES:
        raise errors.BadRequest("state must be one of " + ", ".join(STATES),
                                code="invalid_state")
    rule_id = args.get("rule_id") or None
    if rule_id is not None:
        rule_id = canonical_uuid(rule_id)
        if rule_id is None:
            raise errors.BadRequest("rule_id must be a UUID", code="invalid_rule_id")
    found: dict[str, str | None] = {"state": state, "rule_id": rule_id}
    for name in ("service", "tenant"):  # an empty tenant is the default tenant, not "any"
        value = args.get(name)
        if value is not None and (len(value) > 200 or not clean_string(value)):
            raise errors.BadRequest(f"{name} is too long or not clean text",
                                    code=f"invalid_{name}")
        found[name] = value if value or name == "tenant" else None
    return found

