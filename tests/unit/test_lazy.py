"""Instance caches are built once even when the first calls arrive together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from shared.lazy import instance_cache


def test_fifty_concurrent_first_calls_build_once() -> None:
    built = []
    start = threading.Barrier(50)

    @instance_cache
    def pool() -> object:
        built.append(1)
        time.sleep(0.05)  # a slow build: the window in which functools.cache builds twice
        return object()

    def first_call(_: int) -> object:
        start.wait()
        return pool()

    with ThreadPoolExecutor(50) as executor:
        results = list(executor.map(first_call, range(50)))
    assert len(built) == 1 and len({id(r) for r in results}) == 1
    assert pool.cache_info().currsize == 1
    pool.cache_clear()
    assert pool.cache_info().currsize == 0 and pool() is not results[0] and len(built) == 2


def test_the_heap_is_frozen_only_when_modules_were_imported() -> None:
    import gc
    import sys
    import types

    from shared import lazy

    lazy.freeze_after_imports()  # settle whatever earlier tests imported
    frozen = gc.get_freeze_count()
    kept = [[n] for n in range(1000)]  # long-lived containers made by a request
    lazy.freeze_after_imports()
    assert gc.get_freeze_count() == frozen  # no import: nothing moved

    sys.modules["_test_lazy_fake_sdk"] = types.ModuleType("_test_lazy_fake_sdk")
    try:
        lazy.freeze_after_imports()
        assert gc.get_freeze_count() >= frozen + len(kept)  # the new module's world is frozen
    finally:
        del sys.modules["_test_lazy_fake_sdk"]
        gc.unfreeze()  # leave the test process as it was
