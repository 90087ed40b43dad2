"""Streaming helpers: batch items and overlap their loading with compute.

Used to stream CT slices or slide tiles to the model without holding a whole volume or
slide in memory: the queue is bounded, so memory is ``depth`` batches whatever the input size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


def iter_batches(items: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Yield consecutive lists of at most ``batch_size`` items (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch(items: Iterable[T], *, depth: int = 2, transform: Callable[[T], U] | None = None) -> Iterator[U]:
    """Produce ``transform(item)`` in a background thread, at most ``depth`` ahead of the consumer.

    Decoding (pydicom, OpenSlide, tifffile) releases the GIL for most of its work, so one thread
    overlaps I/O with model inference. Exceptions in the producer are re-raised in the consumer.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(("ok", transform(item) if transform else item))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(("err", exc))
            return
        q.put(("ok", _DONE))

    thread = threading.Thread(target=produce, name="medseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "err":
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        # drain so a blocked producer can observe ``stop`` and exit
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


def map_batched(predictor: Callable, items: Iterable, *, batch_size: int, depth: int = 2) -> Iterator:
    """Apply ``predictor`` to stacked batches of same-shape arrays, yielding one output per item.

    ``predictor`` takes an array (B, ...) and returns an array (B, ...). Items are loaded ahead in
    a background thread (``depth`` batches at most), so decoding overlaps with compute and
    memory stays bounded by the batch size, not by the number of items.
    """
    import numpy as np

    for batch in prefetch(iter_batches(items, batch_size), depth=depth, transform=np.stack):
        out = predictor(batch)
        if len(out) != len(batch):
            raise ValueError(f"predictor returned {len(out)} outputs for a batch of {len(batch)}")
        yield from out
