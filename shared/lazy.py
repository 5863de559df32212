"""`instance_cache`: a zero-argument factory run at most once per instance, thread-safe.

`functools.cache` is not: when the first requests of a fresh instance arrive together (Cloud Run
sends up to `concurrency` at once), each thread can miss the cache and build its own engine or
client, and a burst of fifty threads once built fifty connection pools and exhausted PostgreSQL.
Here the first caller builds under a lock and everyone else waits for its result; after that,
a read is a plain attribute check. `cache_info()` and `cache_clear()` behave like functools'.
"""

from __future__ import annotations

import functools
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
