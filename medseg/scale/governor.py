"""The S^3DNN scheduling logic, in plain Python (no Ray): a deadline-aware queue with a fairness
bound, and the governor that fuses queued tiles from many slides and jobs into full batches.

Zhou et al., "S^3DNN: Supervised Streaming and Scheduling for GPU-Accelerated Real-Time DNN
Workloads" (RTAS 2018) put a *governor* in front of the GPU that fuses DNN requests of many jobs
into shared batches, and a *scheduler* that orders them by deadline. Here a request is one tissue
tile; the model actors of :mod:`medseg.scale.slides` each own one :class:`Governor`.

Order: higher ``priority`` first, then earliest deadline first (EDF; a request without a
deadline has an infinite one), then arrival order. Fairness bound: every ``fair_every``-th
request served is the *oldest* waiting one whatever its priority or deadline, so a background
job with tiles waiting still gets at least ``1 / fair_every`` of the served tiles, and a request
with ``k`` requests older than it waits at most ``k * fair_every`` services (``fair_every=1``
is plain FIFO; ``fair_every=0`` disables the bound: pure priority + EDF, which can starve).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One unit of inference work (a tile) and what the scheduler knows about it."""

    payload: Any = None  # the tile image (or anything the model takes)
    group: Hashable = None  # the slide it belongs to (per-slide batching keeps groups apart)
    job: Hashable = None
    priority: int = 0  # higher first
    deadline: float = math.inf  # absolute (same clock as ``arrival``); inf: none
    arrival: float = 0.0
    shape: Hashable = None  # requests batch together only with the same shape
    tag: Any = None  # caller's handle (e.g. the future to answer)
    seq: int = field(default=-1, compare=False)


class DeadlineQueue:
    """Priority, then earliest deadline first, with every ``fair_every``-th pop the oldest request."""

    def __init__(self, fair_every: int = 4) -> None:
        if fair_every < 0:
            raise ValueError("fair_every must be >= 0")
        self.fair_every = fair_every
        self._edf: list[tuple[int, float, int, Request]] = []
        self._fifo: list[tuple[int, Request]] = []
        self._gone: set[int] = set()  # seqs popped from the other heap (lazy deletion)
        self._seq = itertools.count()
        self._served = 0
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, req: Request) -> None:
        req.seq = next(self._seq)
        heapq.heappush(self._edf, (-req.priority, req.deadline, req.seq, req))
        heapq.heappush(self._fifo, (req.seq, req))
        self._n += 1

    def _drop_top(self, heap: list) -> None:
        item = heapq.heappop(heap)
        # the request was taken through the other heap: forget it once both heaps dropped it
        self._gone.discard(item[-1].seq)

    def _take(self, heap: list, match: Callable[[Request], bool] | None) -> Request | None:
        """Pop the best request of ``heap`` that ``match`` accepts (others stay queued)."""
        skipped: list = []
        found = None
        while heap:
            item = heapq.heappop(heap)
            req = item[-1]
            if req.seq in self._gone:
                self._gone.discard(req.seq)
                continue
            if match is None or match(req):
                found = req
                break
            skipped.append(item)
        for item in skipped:
            heapq.heappush(heap, item)
        if found is not None:
            self._gone.add(found.seq)  # still in the other heap: skipped there when reached
        return found

    def pop(self, match: Callable[[Request], bool] | None = None) -> Request | None:
        """The next request to serve (``match``: only among those it accepts); None when none."""
        fair = self.fair_every > 0 and self._served % self.fair_every == self.fair_every - 1
        first, second = (self._fifo, self._edf) if fair else (self._edf, self._fifo)
        req = self._take(first, match) or self._take(second, match)
        if req is not None:
            self._served += 1
            self._n -= 1
        return req

    def peek_oldest(self) -> Request | None:
        while self._fifo and self._fifo[0][-1].seq in self._gone:
            self._drop_top(self._fifo)
        return self._fifo[0][-1] if self._fifo else None


class Governor:
    """Fuses queued requests into batches of ``batch_size`` (S^3DNN's governor).

    ``fuse=True``: a batch takes tiles of any slides and jobs (with the same shape); a slide with
    3 tissue tiles no longer runs a 3-tile batch. ``fuse=False``: a batch holds the tiles of one
    slide only (what a per-slide loop does; kept as the baseline of the benchmark). A batch is
    released when full, or when its oldest request has waited ``max_wait_s`` (then partial).
    """

    def __init__(
        self,
        batch_size: int,
        *,
        max_wait_s: float = 0.05,
        fuse: bool = True,
        fair_every: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.fuse = fuse
        self.clock = clock
        self.queue = DeadlineQueue(fair_every)
        self._counts: dict[Hashable, int] = {}  # queued requests per batching key

    def _key(self, req: Request) -> Hashable:
        return req.shape if self.fuse else (req.shape, req.group)

    def __len__(self) -> int:
        return len(self.queue)

    def put(self, req: Request) -> None:
        if not req.arrival:
            req.arrival = self.clock()
        self.queue.push(req)
        key = self._key(req)
        self._counts[key] = self._counts.get(key, 0) + 1

    def ready(self, now: float | None = None) -> bool:
        """A full batch can be formed, or the oldest request waited long enough."""
        if any(n >= self.batch_size for n in self._counts.values()):
            return True
        oldest = self.queue.peek_oldest()
        now = self.clock() if now is None else now
        return oldest is not None and now >= oldest.arrival + self.max_wait_s

    def wait_s(self, now: float | None = None) -> float | None:
        """Seconds until the oldest request's wait runs out (None: nothing queued)."""
        oldest = self.queue.peek_oldest()
        if oldest is None:
            return None
        now = self.clock() if now is None else now
        return max(0.0, oldest.arrival + self.max_wait_s - now)

    def next_batch(self, now: float | None = None, *, force: bool = False) -> list[Request]:
        """The next batch in queue order (empty when not :meth:`ready` and not ``force``)."""
        if not len(self.queue) or not (force or self.ready(now)):
            return []
        head = self.queue.pop()
        key = self._key(head)
        batch = [head]
        while len(batch) < self.batch_size:
            req = self.queue.pop(lambda r: self._key(r) == key)
            if req is None:
                break
            batch.append(req)
        self._counts[key] -= len(batch)
        if not self._counts[key]:
            del self._counts[key]
        return batch
