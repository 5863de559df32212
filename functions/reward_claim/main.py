"""reward_claim: claim an event's rewards exactly once (`Idempotency-Key`), operators approve or
reject pending claims, my claims and wallet, and the audit trail (search and CSV export)."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared import errors
from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router, json_response
from shared.validation import Field, Schema

settings = init()
CURSOR_SECRET = settings.require_cursor_secret()
DECISION = Schema({"note": Field("string", max_length=1000)})

app = Router("reward_claim", authenticate=authenticate, rate_limited=True)


@app.route("POST", "/events/{event_id}/claims", role="user",
           summary="Claim an event's rewards")
def claim(call: Call) -> Any:
    from shared import claims, idempotency

    user = call.principal.subject
    event_id = parse_uuid(call.params["event_id"], "event")
    key = call.request.headers.get("Idempotency-Key")
    if key is None:
        raise errors.BadRequest("send an Idempotency-Key header", code="idempotency_key_required")
    scope = f"reward_claim:{user}"
    stored = idempotency.begin(scope, key, idempotency.request_hash({"event": event_id}))
    if stored is not None:
        return json_response(stored.body, stored.status, {"Idempotent-Replayed": "true"})
    try:
        status, body = claims.claim(user, event_id, claims.Idempotency(scope, key))
    except BaseException:
        # Refusals and failures release the key (a stored grant is never released: abandon
        # deletes only a key still in progress), so the client can try again once eligible.
        idempotency.abandon(scope, key)
        raise
    return body, status


@app.route("GET", "/me/claims", role="user", summary="My claims")
def my_claims(call: Call) -> dict[str, Any]:
    from shared import claims, db
    from shared.pagination import page_request

    filters = claims.filters_from(call.args | {"user_id": ""}, user_id=call.principal.subject)
    request = page_request(call.args, CURSOR_SECRET, "claims.mine")
    with db.transaction() as conn:
        return claims.page_of(conn, filters, request, CURSOR_SECRET)


@app.route("GET", "/me/wallet", role="user", summary="My points, items and coupons")
def wallet(call: Call) -> dict[str, Any]:
    from shared import claims, db

    with db.transaction() as conn:
        return claims.wallet(conn, call.principal.subject)


@app.route("GET", "/claims", role="auditor", summary="Search claim attempts (audit)")
def audit(call: Call) -> dict[str, Any]:
    from shared import claims, db
    from shared.pagination import page_request

    filters = claims.filters_from(call.args)
    request = page_request(call.args, CURSOR_SECRET, "claims.audit")
    with db.transaction() as conn:
        return claims.page_of(conn, filters, request, CURSOR_SECRET)


@app.route("GET", "/claims/export", role="auditor", summary="Export claim attempts as CSV")
def export(call: Call) -> flask.Response:
    from shared import claims

    filters = claims.filters_from(call.args)
    return flask.Response(
        flask.stream_with_context(claims.export_csv(filters)), mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="claims.csv"'})


@app.route("GET", "/claims/pending", role="operator", summary="Claims awaiting approval")
def pending(call: Call) -> dict[str, Any]:
    from shared import claims, db
    from shared.pagination import page_request

    filters = claims.filters_from({"event_id": call.args.get("event_id", ""),
                                   "status": "pending"})
    request = page_request(call.args, CURSOR_SECRET, "claims.pending")
    with db.transaction() as conn:
        return claims.page_of(conn, filters, request, CURSOR_SECRET)


@app.route("POST", "/claims/{claim_id}/approve", role="operator", body=DECISION,
           summary="Approve a pending claim")
def approve(call: Call) -> dict[str, Any]:
    from shared import claims, outbox

    with outbox.transaction() as tx:
        return claims.approve(tx, _claim_id(call), call.principal.subject,
                              (call.body or {}).get("note"))


@app.route("POST", "/claims/{claim_id}/reject", role="operator", body=DECISION,
           summary="Reject a pending claim")
def reject(call: Call) -> dict[str, Any]:
    from shared import claims, db

    with db.transaction() as conn:
        return claims.reject(conn, _claim_id(call), call.principal.subject,
                             (call.body or {}).get("note"))


def _claim_id(call: Call) -> str:
    return parse_uuid(call.params["claim_id"], "claim")


@functions_framework.http
def reward_claim(request: flask.Request) -> flask.Response:
    return app(request)
