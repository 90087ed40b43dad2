from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from medseg.engine.batching import iter_batches, map_batched, prefetch


def test_iter_batches_sizes():
    assert [len(b) for b in iter_batches(range(10), 4)] == [4, 4, 2]
    with pytest.raises(ValueError):
        list(iter_batches(range(3), 0))


def test_map_batched_with_known_predictor_is_exact():
    items = [np.full((3, 4), i, np.float32) for i in range(11)]
    calls = []

    def plus_one(batch):
        calls.append(len(batch))
        return batch + 1

    out = list(map_batched(plus_one, iter(items), batch_size=4))
    assert calls == [4, 4, 3]
    assert all(np.array_equal(o, i + 1) for o, i in zip(out, items))


def test_prefetch_is_bounded_and_propagates_errors():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    time.sleep(0.1)
    assert len(produced) <= 4  # consumer took 1, queue holds at most 2, producer blocked on 1
    it.close()

    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetch(broken()))


def test_prefetch_runs_in_background_thread():
    names = list(prefetch(iter(range(3)), transform=lambda _: threading.current_thread().name))
    assert names == ["medseg-prefetch"] * 3
