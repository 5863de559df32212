"""`instance_cache`: a zero-argument factory run at most once per instance, thread-safe.

`functools.cache` is not: when the first requests of a fresh instance arrive together (Cloud Run
sends up to `concurrency` at once), each thread can miss the cache and build its own engine or
client, and a burst of fifty threads once built fifty connection pools and exhausted PostgreSQL.
Here the first caller builds under a lock and everyone else waits for its result; after that,
a read is a plain attribute check. `cache_info()` and `cache_clear()` behave like functools'.
"""

from __future__ import annotations

import functools
import gc
import sys
import threading
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")
_UNSET = object()


class CacheInfo(NamedTuple):
    currsize: int


class InstanceCache(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: object = _UNSET
        self._lock = threading.Lock()
        functools.update_wrapper(self, factory)

    def __call__(self) -> T:
        value = self._value
        if value is _UNSET:
            with self._lock:
                if self._value is _UNSET:
                    self._value = self._factory()
                value = self._value
        return value  # type: ignore[return-value]

    def cache_info(self) -> CacheInfo:
        return CacheInfo(0 if self._value is _UNSET else 1)

    def cache_clear(self) -> None:
        with self._lock:
            self._value = _UNSET


def instance_cache(factory: Callable[[], T]) -> InstanceCache[T]:
    return InstanceCache(factory)


_modules_frozen = 0


def freeze_after_imports() -> None:
    """Move everything alive into the collector's permanent generation whenever the set of
    imported modules grew (called after each request; heavy SDKs are imported lazily, on the
    first requests that need them).

    A full collection scans every tracked object. With google-genai, gRPC and SQLAlchemy
    loaded that is close to a million, and each full collection stopped every thread of a
    chat_turn instance for 75-110 ms, several times a minute under load (measured with
    gc.callbacks; it was the whole p99 of bench.chat_turn). Modules and what they build at
    import live as long as the instance anyway; frozen, they are no longer scanned.
    `gc.freeze()` is a constant-time list move. What is garbage at that moment stays
    allocated: a request's leftovers, a few times per instance."""
    global _modules_frozen
    count = len(sys.modules)
    if count != _modules_frozen:
        _modules_frozen = count
        gc.freeze()
