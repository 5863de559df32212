"""user_lifecycle: status changes and deletions become restrictions, session revocations and
cleanup jobs; duplicates and reordered events change nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared import db, lifecycle
from shared.events import Envelope
from tests.integration.conftest import PROJECT, deployed
from tests.integration.identity_fixtures import Identity


def status_event(user_id: str, status: str, version: int) -> Envelope:
    return Envelope("user.status_changed", {"user_id": user_id, "status": status,
                                            "version": version})


def current(user_id: str) -> lifecycle.Restrictions:
    with db.transaction() as conn:
        return lifecycle.restrictions(conn, user_id)


def test_states_and_their_effects(identity: Identity) -> None:
    account = identity.signup()
    user = account["user_id"]
    assert current(user) == lifecycle.Restrictions()

    assert lifecycle.apply(status_event(user, "inactive", 1))
    assert current(user) == lifecycle.Restrictions("inactive", conversations_read_only=True)
    with db.transaction() as conn, pytest.raises(Exception, match="read-only"):
        lifecycle.require_can_chat(conn, user)
    with db.transaction() as conn:
        lifecycle.require_can_claim(conn, user)  # inactive users may still claim

    assert lifecycle.apply(status_event(user, "suspended", 2))
    assert current(user) == lifecycle.Restrictions("suspended", True, True, True)
    assert identity.sql("SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL",
                        u=user) == [(0,)]

    assert lifecycle.apply(status_event(user, "active", 3))  # reactivation lifts everything
    assert current(user) == lifecycle.Restrictions()

    assert lifecycle.apply(Envelope("user.deleted", {"user_id": user, "version": 4}))
    assert identity.sql("SELECT kind FROM cleanup_jobs WHERE user_id = :u ORDER BY kind",
                        u=user) == [("conversations",), ("uploads",)]


def test_duplicates_and_stale_events_change_nothing(identity: Identity) -> None:
    user = identity.signup()["user_id"]
    suspended = status_event(user, "suspended", 2)
    reactivated = status_event(user, "active", 3)
    assert lifecycle.apply(reactivated)  # delivered first, out of order
    assert not lifecycle.apply(suspended)  # older: ignored
    assert not lifecycle.apply(reactivated)  # duplicate: ignored
    assert current(user) == lifecycle.Restrictions()
    assert identity.sql("SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL",
                        u=user) == [(1,)]


def test_malformed_event_is_refused() -> None:
    with pytest.raises(Exception, match="malformed"):
        lifecycle.apply(Envelope("user.status_changed", {"user_id": "u", "status": "banished",
                                                         "version": 1}))


def test_admin_suspension_reaches_the_lifecycle_function(identity: Identity,
                                                         platform_env: dict[str, str],
                                                         run_dir: Path) -> None:
    admin, target = identity.signup(), identity.signup()
    identity.make_admin(admin)
    with deployed("user_lifecycle", platform_env | {"GOOGLE_CLOUD_PROJECT": PROJECT}, run_dir):
        resp = identity.users.put(f"/users/{target['user_id']}/status",
                                  headers=identity.bearer(admin), json={"status": "inactive"})
        assert resp.status_code == 200
        deadline = time.monotonic() + 20
        while current(target["user_id"]).status != "inactive":
            assert time.monotonic() < deadline, "user_lifecycle did not apply the change"
            time.sleep(0.05)
    assert current(target["user_id"]).conversations_read_only


@pytest.mark.parametrize("data", [
    {"user_id": "not-a-uuid", "status": "active", "version": 1},
    {"user_id": "00000000-0000-0000-0000-000000000001", "status": "active", "version": 2**70},
    {"user_id": "00000000-0000-0000-0000-000000000001", "status": "active", "version": True},
    {"user_id": "\x00", "status": "active", "version": 1},
])
def test_permanently_bad_events_are_422_not_retried(data: dict) -> None:
    from shared import errors

    with pytest.raises(errors.ValidationFailed):
        lifecycle.apply(Envelope("user.status_changed", data))


def test_event_for_an_unknown_user_is_acknowledged_without_effect(identity: Identity) -> None:
    ghost = "00000000-0000-0000-0000-00000000beef"
    assert not lifecycle.apply(status_event(ghost, "suspended", 1))
    assert identity.sql("SELECT count(*) FROM account_restrictions") == [(0,)]
