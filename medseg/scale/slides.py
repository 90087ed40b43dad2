"""``slide-score`` on Ray, the S^3DNN way: slide tasks feed model actors that fuse tiles of many
slides (and jobs) into full batches, served earliest-deadline-first with a fairness bound.

- Slide tasks (CPU, ``RayConfig.slide_cpus`` each): open the slide, tissue, stain QC, tile plan
  and tile decoding (:func:`~medseg.pathology.score.plan_slide`,
  :func:`~medseg.pathology.score.read_slide_tiles`); at most ``tiles_in_flight`` tiles are sent
  and unanswered at once (back-pressure), so a slide task holds at most that many tiles plus the
  read-ahead groups, whatever the slide size. After inference the task merges its slide
  (:func:`~medseg.pathology.score.finish_slide`): the same phases as the local ``score_slide``.
- Model actors (``RayConfig.actors``; one GPU each when the cluster has GPUs): each holds the
  detector and a :class:`~medseg.scale.governor.Governor` that fuses queued tiles into batches.
- The driver is the one writer of every slide's outputs (atomic folder, as locally), the table,
  the report; ``--resume`` and failed rows work as in :func:`~medseg.pathology.batch.score_slides`.
- Fault tolerance: actors restart (``max_restarts``) and Ray retries their unfinished calls; a
  tile whose actor is gone for good goes to another actor; a slide task whose worker dies is
  re-run (``max_retries``). A slide's result is taken once per tile index and published once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError
from medseg.results import RunResult
from medseg.scale.actors import ModelPool, ModelWorker, _served, _shared_name  # noqa: F401 - re-exported

log = logging.getLogger("medseg.scale")


@dataclass
class RayConfig:
    """How a batch runs on Ray (``--ray``, ``--ray-actors``, ``--priority``, ``--deadline``)."""

    address: str = "auto"  # auto: local runtime; ray://host:10001 or host:6379: join a cluster
    actors: int | None = None  # model actors; None: one per GPU of the cluster, else 1
    actor_cpus: float = 1.0
    actor_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    slide_cpus: float = 0.25  # slide tasks mostly wait on the actors
    slides_in_flight: int = 4  # slide tasks of this job at once
    tiles_in_flight: int = 8  # per slide task: tiles sent to the actors and not yet answered
    max_wait_s: float = 0.05  # a partial batch goes after its oldest tile waited this long
    fuse: bool = True  # False: batches of one slide only (the benchmark's baseline)
    fair_every: int = 4  # every n-th tile served is the oldest waiting one (0: no fairness bound)
    priority: int = 0  # higher first
    deadline_s: float | None = None  # seconds from the job's start; None: no deadline
    max_restarts: int = 3  # per actor
    # share the model actors with other jobs of the cluster (named, detached; None: when joining a
    # cluster by address): their one queue then orders all jobs' tiles by priority and deadline
    share_actors: bool | None = None
    idle_exit_s: float = 600.0  # shared actors end themselves after this long without work
    track_memory: bool = False  # sample each slide task's RSS, one fresh worker per slide (benchmark)

    def check(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise InputError(f"--ray-actors must be at least 1, got {self.actors}")
        if self.slides_in_flight < 1 or self.tiles_in_flight < 1:
            raise InputError("slides and tiles in flight must be at least 1")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise InputError(f"--deadline must be > 0 seconds, got {self.deadline_s:g}")
        if self.fair_every < 0:
            raise InputError(f"fair_every must be >= 0, got {self.fair_every}")


@dataclass
class _Job:
    """What every tile of one job carries to the actors."""

    id: str
    priority: int
    deadline: float
    min_score: float


class _MemorySampler:
    """Peak RSS growth of this process while a slide task runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.start) / 2**20


def _slide_task(
    path: str, abspath: str, name: str, cfg, actors: list, job: _Job, meta: dict, rc: RayConfig, offset: int
):
    """One slide on a Ray worker: plan, stream tiles to the actors (bounded), merge. Returns
    ``{"result": SlideResult}`` or ``{"failed": reason}``, with the task's memory numbers."""
    import ray

    from medseg.pathology.batch import failure_reason
    from medseg.pathology.feasibility import load_hook
    from medseg.pathology.score import (
        SLIDE_ERRORS,
        SlideResult,
        TileTally,
        finish_slide,
        open_scoring_slide,
        plan_slide,
        read_slide_tiles,
    )

    sampler = None
    if rc.track_memory:  # libraries first, so the sample shows what the tiles cost
        import torch  # noqa: F401
        import torchvision.ops  # noqa: F401

        sampler = _MemorySampler()
    stats = {"max_tiles_in_flight": 0, "tiles_sent": 0, "pid": os.getpid()}
    waiting: dict[Any, tuple[int, Any, int]] = {}  # call -> (tile index, image ref, attempt)

    def send(i: int, img_ref, attempt: int) -> None:
        actor = actors[(offset + stats["tiles_sent"] + attempt) % len(actors)]
        call = actor.infer.remote(img_ref, name, job.id, job.priority, job.deadline, job.min_score)
        waiting[call] = (i, img_ref, attempt)
        stats["tiles_sent"] += 1
        stats["max_tiles_in_flight"] = max(stats["max_tiles_in_flight"], len(waiting))

    def drain(plan, tally, keep: int) -> None:
        while len(waiting) > keep:
            done, _ = ray.wait(list(waiting), num_returns=1)
            for call in done:
                i, img_ref, attempt = waiting.pop(call)
                try:
                    tally.detected(plan, i, ray.get(call))
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                    if attempt + 1 >= 2 * len(actors) + 1:
                        raise RuntimeError(f"model actors unavailable: {exc.__class__.__name__}") from None
                    send(i, img_ref, attempt + 1)  # the actor is gone for good: another one runs it
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    raise RuntimeError(f"the detector failed: {str(cause).strip().splitlines()[0]}") from None

    try:
        feasible = load_hook(cfg.feasibility)
        with open_scoring_slide(abspath, cfg) as slide:
            plan = plan_slide(slide, path, cfg, name)
            if isinstance(plan, SlideResult):
                return {"result": plan, "stats": stats}
            tally = TileTally(len(plan.tiles), path)
            stream = read_slide_tiles(slide, plan, cfg, feasible, tally)
            with contextlib.closing(stream):
                for i, _t, img in stream:
                    if img is not None:
                        send(i, ray.put(img), 0)
                        del img
                        drain(plan, tally, rc.tiles_in_flight - 1)
        drain(plan, tally, 0)
        result = finish_slide(plan, tally, cfg, margins=meta["margins"], weights=meta["weights"])
        return {"result": result, "stats": stats}
    except SLIDE_ERRORS as exc:
        reason = failure_reason(exc)
        if abspath != path:  # the reason names the slide as the user gave it, as locally
            reason = reason.replace(abspath, path)
        return {"failed": reason, "stats": stats}
    finally:
        for call in waiting:
            with contextlib.suppress(Exception):
                ray.cancel(call)
        if sampler is not None:
            stats["peak_rss_growth_mb"] = round(sampler.stop(), 1)


class _Progress:
    """Two bars on a terminal: slides done, and tiles/s of this job fed by the actors' counters."""

    def __init__(self, total: int, enabled: bool) -> None:
        import sys

        self.bars = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bars = (tqdm(total=total, desc="slides", unit="slide", position=0),
                         tqdm(desc="tiles", unit="tile", position=1))  # fmt: skip
        self.tiles = 0

    def slide_done(self) -> None:
        if self.bars:
            self.bars[0].update(1)

    def tiles_done(self, n: int) -> None:
        if self.bars and n > self.tiles:
            self.bars[1].update(n - self.tiles)
        self.tiles = max(self.tiles, n)

    def close(self) -> None:
        if self.bars:
            for b in self.bars:
                b.close()


def _check_resolution(cfg, weights_path: str | Path) -> None:
    """The local runner's ``--mpp`` check, from the weights' metadata (the driver loads no detector)."""
    from types import SimpleNamespace

    from medseg.engine.checkpoint import read_meta
    from medseg.pathology.detector import check_detector_resolution

    trained = read_meta(weights_path).config.get("target_mpp")
    check_detector_resolution(cfg.target_mpp, SimpleNamespace(config=SimpleNamespace(target_mpp=trained)))


def score_slides_ray(
    inputs: Iterable[str | Path],
    out: str | Path,
    config=None,
    ray_config: RayConfig | None = None,
    *,
    weights: str | Path | None = None,
    detector_factory: Callable[[], Any] | None = None,
    pool: ModelPool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = False,
) -> RunResult:
    """:func:`medseg.pathology.batch.score_slides` on Ray: the same result, table, folders, report.

    ``weights`` / ``detector_factory`` (a picklable callable returning a detector) say what the
    actors load; ``pool``: model actors shared with other jobs (then their queue orders the jobs'
    tiles by priority and deadline). Workers must reach the slides and the weights (shared
    storage); only the driver writes ``out``.
    """
    from medseg.engine.weights import resolve_weights
    from medseg.pathology.batch import (
        batch_inputs,
        check_resume_settings,
        finish_run,
        record_kept,
        record_slide,
    )
    from medseg.pathology.detector import DEMO_WEIGHTS, load_detector
    from medseg.pathology.feasibility import load_hook
    from medseg.pathology.outputs import is_complete, kept_rows
    from medseg.pathology.score import ScoreConfig
    from medseg.scale import connect

    cfg = config or ScoreConfig()
    rc = ray_config or RayConfig()
    cfg.check()
    rc.check()
    out, paths, names = batch_inputs(inputs, out, resume=resume, overwrite=overwrite)
    load_hook(cfg.feasibility)  # a bad hook stops everything before any work, as locally
    is_demo, label = False, None
    if pool is None and detector_factory is None:
        weights_path, is_demo = resolve_weights(weights, demo=DEMO_WEIGHTS)
        label = str(weights_path)  # the summaries name the weights as given, as locally
        # workers may run in another folder (or machine): they load the absolute path
        detector_factory = functools.partial(
            load_detector, str(Path(weights_path).resolve()), device=cfg.device, amp=cfg.amp
        )
        _check_resolution(cfg, weights_path)  # as locally: before any slide, it would fail them all
    ray = connect(rc.address)
    own_pool = pool is None
    if own_pool:
        share = (
            rc.share_actors if rc.share_actors is not None else rc.address not in (None, "", "auto", "local")
        )
        name = _shared_name(detector_factory, cfg, rc) if share else None
        pool = ModelPool(detector_factory, batch_size=cfg.batch_size, ray_cfg=rc, shared_name=name)
    started = time.time()
    try:
        meta = pool.meta()
        if label is not None:
            meta = {**meta, "weights": label}
        if resume:  # as locally: one table must not mix two detectors or two scoring rules
            kept = [r["slide"] for r in kept_rows(out, exclude=set(names))]
            check_resume_settings(
                out, kept + [n for n in names if is_complete(out / n)], cfg, meta["weights"]
            )
        run = _run_job(
            ray,
            pool,
            paths,
            names,
            out,
            cfg,
            rc,
            meta,
            resume,
            progress,
            record_kept,
            record_slide,
            is_complete,
        )
        served = _served(pool.stats(timeout=5.0))
    finally:
        if own_pool and not pool.shared:  # shared actors serve other jobs; they end when idle
            pool.shutdown()
    rows = kept_rows(out, exclude=set(names)) if resume else []
    final = RunResult("slide-score")
    for item, row in run:
        final.add(item)
        rows.append(row)
    finish_run(final, rows, out, cfg, report=report, runtime=meta.get("runtime", {}), weights=meta["weights"])
    final.summary["demo_weights"] = is_demo
    final.summary["ray"] = {**asdict(rc), "actors": len(pool.actors), "nodes": _node_count(ray), **served}
    job_s = time.time() - started
    final.summary["ray"]["job_wall_s"] = round(job_s, 3)
    if rc.deadline_s is not None:  # scheduling only: a missed deadline is said, not an error
        final.summary["ray"]["deadline_met"] = job_s <= rc.deadline_s
        if job_s > rc.deadline_s:
            final.warnings.append(f"deadline missed: {job_s:.0f} s for a deadline of {rc.deadline_s:g} s")
    if is_demo:
        final.warnings.append("demo weights (trained on synthetic slides only, not for clinical use)")
    return final


def _node_count(ray) -> int:
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception:  # noqa: BLE001 - informative only
        return 0


def _run_job(
    ray, pool, paths, names, out, cfg, rc, meta, resume, progress, record_kept, record_slide, is_complete
):
    """Submit the slide tasks (at most ``slides_in_flight`` at once), publish each as it ends;
    return ``(item, row)`` per slide in input order."""
    start = time.time()
    job = _Job(uuid.uuid4().hex[:12], rc.priority, start + rc.deadline_s if rc.deadline_s else math.inf,
               cfg.min_score)  # fmt: skip
    opts = {"num_cpus": rc.slide_cpus, "max_retries": 2}
    if rc.track_memory:
        opts["max_calls"] = 1  # a fresh worker per slide: its memory numbers are that slide's alone
    task = ray.remote(**opts)(_slide_task)
    slots: list[tuple | None] = [None] * len(paths)
    todo = []
    for k, name in enumerate(names):
        if resume and is_complete(out / name):
            one = RunResult("slide-score")
            row = record_kept(one, name, out / name)
            slots[k] = (one.items[0], row)
        else:
            todo.append(k)
    bars = _Progress(len(todo), progress)
    running: dict[Any, int] = {}
    last_poll = 0.0
    try:
        while todo or running:
            while todo and len(running) < rc.slides_in_flight:
                k = todo.pop(0)
                p = str(paths[k])
                ref = task.remote(p, os.path.abspath(p), names[k], cfg, pool.actors, job, meta, rc, k)
                running[ref] = k
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in done:
                k = running.pop(ref)
                slots[k] = _publish(ray, ref, paths[k], names[k], out, record_slide)
                bars.slide_done()
            if progress and time.time() - last_poll > 1.0:
                last_poll = time.time()
                bars.tiles_done(sum(s["jobs"].get(job.id, 0) for s in pool.stats(timeout=0.2)))
    finally:
        bars.close()
        for ref in running:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
    log.info("job %s: %d slide(s) in %.1f s", job.id, len(paths), time.time() - start)
    return slots


def _publish(ray, ref, path, name, out, record_slide):
    """The driver writes the slide's outputs (or its failed row) once; returns (item, row)."""
    one = RunResult("slide-score")
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task's worker died more often than retried
        outcome = {"failed": f"Ray worker lost: {exc.__class__.__name__}", "stats": {}}
    if "failed" in outcome:
        row = record_slide(one, name, path, out / name, MedsegError(outcome["failed"]))
    else:
        try:
            row = record_slide(one, name, path, out / name, outcome["result"])
        except (OSError, ValueError) as exc:
            one = RunResult("slide-score")
            row = record_slide(one, name, path, out / name, exc)
    item = one.items[0]
    item.metrics["ray"] = outcome.get("stats", {})
    return item, row


def score_slides_cli(
    slides,
    out,
    cfg,
    address: str,
    *,
    actors: int | None,
    priority: int,
    deadline: float | None,
    weights,
    cascade: bool,
    **kwargs: Any,
) -> RunResult:
    """``slide-score --ray``: one-line errors for what does not run on Ray, then :func:`score_slides_ray`."""
    from medseg.scale import require_ray

    require_ray()
    if cascade:
        raise InputError(
            "--cascade does not run with --ray yet (its per-slide tile counts assume a slide's own "
            "batches); drop one of the two"
        )
    rc = RayConfig(address=address, actors=actors, priority=priority, deadline_s=deadline)
    return score_slides_ray(slides, out, cfg, rc, weights=weights, **kwargs)
