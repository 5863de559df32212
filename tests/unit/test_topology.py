"""The manifest and the code agree: every function folder is declared, every declared function
exists with its entry point, and the wiring is complete."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from croniter import croniter

from infra.topology import TOPOLOGY, Trigger

REPO = Path(__file__).resolve().parents[2]
FUNCTION_DIRS = {p.name for p in (REPO / "functions").iterdir()
                 if p.is_dir() and not p.name.startswith((".", "_"))}


def _entry_points(source: Path) -> dict[str, str]:
    """Top-level functions decorated with functions_framework.<kind>, by name -> kind."""
    found = {}
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Attribute) and isinstance(deco.value, ast.Name)
                        and deco.value.id == "functions_framework"):
                    found[node.name] = deco.attr
    return found


def test_every_function_folder_is_declared() -> None:
    assert FUNCTION_DIRS == {f.name for f in TOPOLOGY.functions}


@pytest.mark.parametrize("function", TOPOLOGY.functions, ids=lambda f: f.name)
def test_declared_function_exists_with_its_entry_point(function) -> None:
    main = REPO / function.source / "main.py"
    assert main.is_file(), f"{function.name}: {main} missing"
    entry_points = _entry_points(main)
    assert entry_points == {function.entry_point: "http"}, (
        f"{function.name}: expected one @functions_framework.http named {function.entry_point}")


def test_names_are_unique() -> None:
    for items in (TOPOLOGY.functions, TOPOLOGY.topics, TOPOLOGY.subscriptions,
                  TOPOLOGY.schedules, TOPOLOGY.buckets):
        names = [item.name for item in items]
        assert len(names) == len(set(names))


def test_every_subscription_has_a_declared_dead_letter_topic_and_sane_policy() -> None:
    topics = {t.name for t in TOPOLOGY.topics}
    for sub in TOPOLOGY.subscriptions:
        assert sub.dead_letter_topic in topics, sub.name
        assert sub.dead_letter_topic != sub.topic
        assert sub.topic in topics, sub.name
        # Pub/Sub's limits: attempts 5..100, ack deadline 10..600 s, backoff 0..600 s.
        assert 5 <= sub.max_delivery_attempts <= 100
        assert 10 <= sub.ack_deadline_s <= 600
        assert 0 <= sub.retry.minimum_backoff_s <= sub.retry.maximum_backoff_s <= 600


def test_every_consumed_topic_has_a_producer_or_is_external() -> None:
    producers = {t for f in TOPOLOGY.functions for t in f.publishes}
    producers |= {s.topic for s in TOPOLOGY.schedules}
    producers |= {b.notification_topic for b in TOPOLOGY.buckets if b.notification_topic}
    external = {t.name for t in TOPOLOGY.topics if t.external}
    for sub in TOPOLOGY.subscriptions:
        assert sub.topic in producers | external, f"{sub.topic} is consumed but never produced"


def test_topics_that_functions_publish_or_buckets_notify_are_declared() -> None:
    topics = {t.name for t in TOPOLOGY.topics}
    for function in TOPOLOGY.functions:
        assert set(function.publishes) <= topics, function.name
    for bucket in TOPOLOGY.buckets:
        assert bucket.notification_topic is None or bucket.notification_topic in topics


def test_triggers_match_wiring() -> None:
    scheduled_topics = {s.topic for s in TOPOLOGY.schedules}
    for function in TOPOLOGY.functions:
        subs = TOPOLOGY.subscriptions_for(function.name)
        if function.trigger is Trigger.HTTP:
            assert not subs, f"{function.name} is HTTP but has subscriptions"
        else:
            assert subs, f"{function.name} is {function.trigger} but nothing delivers to it"
        if function.trigger is Trigger.SCHEDULE:
            assert all(s.topic in scheduled_topics for s in subs), function.name
        assert function.public is False or function.trigger is Trigger.HTTP, (
            f"{function.name}: only HTTP functions may be public")


def test_schedules_are_valid_cron_in_real_time_zones() -> None:
    from zoneinfo import ZoneInfo

    for schedule in TOPOLOGY.schedules:
        assert croniter.is_valid(schedule.cron), schedule.name
        ZoneInfo(schedule.time_zone)


def test_no_primitive_roles_and_sane_sizes() -> None:
    for function in TOPOLOGY.functions:
        assert not {"roles/owner", "roles/editor", "roles/viewer"} & set(function.roles)
        assert 128 <= function.memory_mb <= 32768
        assert 1 <= function.timeout_s <= 3600
        assert 1 <= function.concurrency <= 1000
        assert 0 <= function.min_instances <= function.max_instances
