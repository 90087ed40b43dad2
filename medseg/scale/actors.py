"""The model actors of :mod:`medseg.scale.slides`: the detector behind a governor (S^3DNN).

Each actor is an asyncio Ray actor: many slide tasks' ``infer`` calls wait on it while one thread
runs the detector on batches the :class:`~medseg.scale.governor.Governor` fuses from the queue
(any slides and jobs with the same tile shape; priority, then earliest deadline first, with the
fairness bound). A :class:`ModelPool` is private to one job, or shared by name on a cluster
(detached actors that end themselves when idle), so that one queue orders every job's tiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import ModelError
from medseg.scale.governor import Governor, Request

if TYPE_CHECKING:
    from medseg.scale.slides import RayConfig

log = logging.getLogger("medseg.scale")


class ModelWorker:
    """A model actor's body: the detector behind a governor (asyncio: many slides' calls wait on it)."""

    def __init__(
        self,
        factory: Callable[[], Any],
        batch_size: int,
        max_wait_s: float,
        fuse: bool,
        fair_every: int,
        idle_exit_s: float | None = None,
    ):
        self.detector = factory()
        self.idle_exit_s = idle_exit_s
        self.last_active = time.time()
        self.governor = Governor(batch_size, max_wait_s=max_wait_s, fuse=fuse, fair_every=fair_every)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-model")
        self.counts = {"tiles": 0, "batches": 0, "busy_s": 0.0, "started": time.time()}
        self.batch_sizes: dict[int, int] = {}
        self.job_tiles: dict[str, int] = {}
        self.order: list[str] = []  # job of each batch's first tile (tests read the serving order)
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    def _ensure_serving(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._serve())

    async def meta(self) -> dict[str, Any]:
        from medseg.pathology.score import detector_meta

        self._ensure_serving()
        self.last_active = time.time()
        describe = self.detector.describe() if hasattr(self.detector, "describe") else {}
        return {**detector_meta(self.detector), "runtime": describe, "pid": os.getpid()}

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "batch_sizes": dict(self.batch_sizes), "jobs": dict(self.job_tiles),
                "order": list(self.order), "queued": len(self.governor), "pid": os.getpid()}  # fmt: skip

    async def infer(
        self, image: np.ndarray, group: str, job: str, priority: int, deadline: float, min_score: float
    ):
        """Detections (tile pixels) of one tile, once the governor has run it in a batch."""
        self._ensure_serving()
        self.last_active = time.time()
        future = asyncio.get_running_loop().create_future()
        req = Request(image, group, job, priority, deadline, shape=image.shape, tag=(future, min_score))
        self.governor.put(req)
        self._wake.set()
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self.governor.next_batch()
            if not batch:
                self._wake.clear()
                wait = self.governor.wait_s()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), timeout=wait if wait is not None else self.idle_exit_s
                    )
                idle = time.time() - self.last_active
                if not len(self.governor) and self.idle_exit_s and idle >= self.idle_exit_s:
                    self._exit()  # a shared actor nobody uses any more frees its CPU/GPU
                continue
            t0 = time.perf_counter()
            try:
                dets = await loop.run_in_executor(self.pool, self._predict, batch)
            except Exception as exc:  # noqa: BLE001 - every tile of the batch gets the error
                for r in batch:
                    if not r.tag[0].done():
                        r.tag[0].set_exception(exc)
                continue
            self.counts["busy_s"] += time.perf_counter() - t0
            self.counts["batches"] += 1
            self.counts["tiles"] += len(batch)
            self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
            self.order.append(str(batch[0].job))
            for r, d in zip(batch, dets):
                self.job_tiles[str(r.job)] = self.job_tiles.get(str(r.job), 0) + 1
                if not r.tag[0].done():
                    r.tag[0].set_result(d)

    def _exit(self) -> None:
        import ray

        log.info("model actor idle for %.0f s: ending", self.idle_exit_s)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _predict(self, batch: list[Request]) -> list[tuple]:
        low = min(r.tag[1] for r in batch)  # jobs may differ in min_score: filter per tile after
        dets = self.detector.predict(np.stack([r.payload for r in batch]), min_score=low)
        out = []
        for r, (b, lab, s, *rest) in zip(batch, dets):
            keep = s >= r.tag[1]
            out.append((b[keep], lab[keep], s[keep], *(x[keep] for x in rest)))
        return out


@functools.cache
def _actor_class():
    import ray

    return ray.remote(ModelWorker)


class ModelPool:
    """The model actors of one or several jobs (share one pool to let EDF order jobs' tiles)."""

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        batch_size: int,
        ray_cfg: RayConfig,
        shared_name: str | None = None,
    ) -> None:
        import ray

        self.shared = shared_name is not None
        self.ray_cfg = ray_cfg
        gpus = ray_cfg.actor_gpus
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        opts = {
            "num_cpus": ray_cfg.actor_cpus,
            "num_gpus": gpus,
            "max_restarts": ray_cfg.max_restarts,
            "max_task_retries": max(1, ray_cfg.max_restarts),  # unfinished calls re-run after a restart
            "max_concurrency": 10_000,
        }
        idle = ray_cfg.idle_exit_s if self.shared else None
        args = (factory, batch_size, ray_cfg.max_wait_s, ray_cfg.fuse, ray_cfg.fair_every, idle)
        n = ray_cfg.actors or (max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)) if gpus else 1)
        named = [{} for _ in range(n)]
        if self.shared:  # every job with the same model and batching settings gets the same actors
            opts.update(namespace="medseg", lifetime="detached", get_if_exists=True)
            named = [{"name": f"{shared_name}-{k}"} for k in range(n)]
        self.actors = [_actor_class().options(**opts, **nk).remote(*args) for nk in named]
        self._meta: dict[str, Any] | None = None

    def meta(self) -> dict[str, Any]:
        """Margins, weights and runtime of the detector (ModelError if the actors cannot load it)."""
        import ray

        if self._meta is None:
            try:
                self._meta = ray.get(self.actors[0].meta.remote())
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None) or exc
                first = (getattr(cause, "message", None) or str(cause)).strip().splitlines()
                raise ModelError(
                    f"the model actors could not load the detector: {first[-1] if first else cause}"
                ) from None
        return self._meta

    def stats(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Counters of the actors that answer within ``timeout`` (a restarting one is left out)."""
        import ray

        refs = [a.stats.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        out = []
        for ref in ready:
            with contextlib.suppress(ray.exceptions.RayError):
                out.append(ray.get(ref))
        return out

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)


def _shared_name(factory, cfg, rc: RayConfig) -> str:
    """One name per model + batching settings: jobs that may share actors find the same ones."""
    import hashlib

    from medseg import __version__

    what = (__version__, _factory_key(factory), cfg.device, cfg.amp, cfg.batch_size, rc.fuse, rc.fair_every,
            rc.max_wait_s, rc.actor_cpus, rc.actor_gpus)  # fmt: skip
    return "medseg-slide-score-" + hashlib.sha1(repr(what).encode()).hexdigest()[:12]


def _factory_key(factory) -> str:
    if isinstance(factory, functools.partial):
        return repr(
            (getattr(factory.func, "__qualname__", ""), factory.args, sorted(factory.keywords.items()))
        )
    return getattr(factory, "__qualname__", repr(factory))


def _served(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """What the model actors did (since they started: with a shared pool, other jobs too)."""
    sizes: dict[int, int] = {}
    for st in stats:
        for n, k in st["batch_sizes"].items():
            sizes[int(n)] = sizes.get(int(n), 0) + k
    tiles, busy = sum(st["tiles"] for st in stats), sum(st["busy_s"] for st in stats)
    return {
        "batches": sum(sizes.values()),
        "tiles_inferred": tiles,
        "mean_batch": round(tiles / max(1, sum(sizes.values())), 2),
        "batch_sizes": dict(sorted(sizes.items())),
        "model_busy_s": round(busy, 3),
    }
