"""Per-item batch runner: the same batch loop runs locally or as one Ray task per item.

The batch commands (``cells-segment``, ``brain-segment``) record rows, resume and summaries in
one place; only *where* each item's work runs changes. They take a ``mapper``: a callable
``mapper(fn, items)`` that yields, in input order, either ``fn(item)`` or the exception it
raised. :func:`local_map` is a plain loop (the default; Ray never imported); :class:`RayMapper`
runs one Ray task per item with a bounded number in flight and retries for a dying worker, and
hands a task's exception back as the very exception the local loop would have caught, so the
failure row reads the same.
"""

from __future__ import annotations

import logging
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from medseg.errors import InputError, MedsegError

log = logging.getLogger("medseg.scale")

T = TypeVar("T")
R = TypeVar("R")

Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[Any]]


def local_map(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R | Exception]:
    """Run ``fn`` on each item here, in order; an item's exception is yielded, not raised."""
    for item in items:
        try:
            yield fn(item)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the batch
            yield exc


@dataclass
class _Failure:
    """An item's exception in a form that survives pickling unchanged.

    ``MedsegError`` does not pickle faithfully (its ``path`` would be folded into the message),
    and some third-party exceptions do not pickle at all.
    """

    cls: type
    message: str
    path: str | None = None
    exc: Exception | None = None  # exceptions that round-trip through pickle as they are

    @classmethod
    def of(cls, exc: Exception) -> _Failure:
        if isinstance(exc, MedsegError):
            return cls(type(exc), exc.message, None if exc.path is None else str(exc.path))
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - unpicklable: keep class name and message
            return cls(RuntimeError, f"{exc.__class__.__name__}: {exc}")
        return cls(type(exc), str(exc), exc=exc)

    def rebuild(self) -> Exception:
        if self.exc is not None:
            return self.exc
        if issubclass(self.cls, MedsegError):
            return self.cls(self.message, path=self.path)
        return self.cls(self.message)


def _run_item(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    """The Ray task body: (True, result) or (False, _Failure) — never raises for an item's error,
    so Ray retries only what it should (a worker that died), not a bad input."""
    try:
        return True, fn(item)
    except Exception as exc:  # noqa: BLE001 - reported as the item's failure row
        log.debug("item failed on a Ray worker", exc_info=True)
        return False, _Failure.of(exc)


class RayMapper:
    """One Ray task per item, at most ``max_in_flight`` at a time, results in input order.

    ``fn`` (typically a ``functools.partial`` holding the model) is put into the object store
    once and shared by every task. A task whose worker dies is re-run up to ``max_retries``
    times (Ray task retries); the item's outputs are written by that one task, atomically, as in
    the local run. Workers must be able to import :mod:`medseg` (the same install on each node)
    and, off a single machine, see the output folder (shared storage).
    """

    def __init__(
        self,
        ray: Any,
        *,
        max_in_flight: int | None = None,
        max_retries: int = 3,
        num_cpus: float = 1,
        num_gpus: float = 0,
    ) -> None:
        self.ray = ray
        if max_in_flight is None:
            max_in_flight = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-3)))
        self.max_in_flight = max(1, int(max_in_flight))
        self._task = ray.remote(_run_item).options(
            max_retries=max_retries, num_cpus=num_cpus, num_gpus=num_gpus
        )

    def __call__(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R | Exception]:
        ray = self.ray
        fn_ref = ray.put(fn)
        pending: deque = deque()
        todo = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.max_in_flight:
                try:
                    item = next(todo)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(self._task.remote(fn_ref, item))
            if not pending:
                return
            ref = pending.popleft()
            try:
                ok, value = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task itself was lost (retries used up)
                log.debug("Ray task lost", exc_info=True)
                first = str(exc).splitlines()[0] if str(exc) else ""
                yield RuntimeError(f"Ray task lost ({exc.__class__.__name__}: {first})")
                continue
            yield value if ok else value.rebuild()


def ray_mapper(address: str | None, *, device: str = "auto", **kwargs: Any) -> RayMapper:
    """Connect to Ray (``--ray`` value) and return a mapper running one task per item.

    The model is built once on the driver (``device`` as the command resolves it) and shipped to
    the tasks; a model on CUDA makes each task ask Ray for one GPU (there it is ``cuda``), so the
    cluster must have GPUs. A failure here is one line, before any item runs.
    """
    from medseg.engine.runtime import select_device
    from medseg.scale import connect

    dev = select_device(device)
    if dev.type == "cuda" and (dev.index or 0) > 0:
        raise InputError(f"--device {device} with --ray: give --device cuda (each task gets one GPU)")
    ray = connect(address)
    if dev.type == "cuda":
        if ray.cluster_resources().get("GPU", 0) < 1:
            raise InputError(f"--device {device} with --ray: the Ray cluster has no GPU; give --device cpu")
        kwargs.setdefault("num_gpus", 1)
    return RayMapper(ray, **kwargs)
