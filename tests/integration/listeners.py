"""Firestore listeners for tests that read what our code wrote, the way a client app would.

The emulator sometimes never answers a listen that was opened moments before a write to the
same documents (seen about once in ten full runs: the snapshot callback is never called, not
even for the initial state). So a listener here is ready only once its first snapshot (the
state before the write) has arrived; if it has not within a few seconds, it is reopened. The
test's write comes after that, and what the test then waits for is a real change delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

FIRST_SNAPSHOT_S = 5.0
ATTEMPTS = 4


def listen(ref: Any, on_snapshot: Callable[[Any, Any, Any], None]) -> Any:
    """`ref.on_snapshot(on_snapshot)` once it has delivered its first snapshot; returns the
    watch (call `unsubscribe()` when done)."""
    for _ in range(ATTEMPTS):
        first = threading.Event()

        def callback(docs: Any, changes: Any, read_time: Any,
                     first: threading.Event = first) -> None:
            first.set()
            on_snapshot(docs, changes, read_time)

        watch = ref.on_snapshot(callback)
        if first.wait(FIRST_SNAPSHOT_S):
            return watch
        watch.unsubscribe()
    raise AssertionError(f"no first snapshot from the Firestore emulator in {ATTEMPTS} tries")
