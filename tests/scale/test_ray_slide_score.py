"""slide-score on a local Ray runtime: the same outputs as the local path, an actor killed mid-run
loses no slide and counts none twice, and a high-priority job overtakes a backlog."""

from __future__ import annotations

import csv
import json
import threading
import time

import pytest

from medseg.pathology.batch import score_slides
from medseg.pathology.score import ScoreConfig

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a local Ray runtime and worker start-up: tens of seconds on 2 cores

from medseg.scale.slides import ModelPool, RayConfig, score_slides_ray  # noqa: E402

from .conftest import ColourDetector  # noqa: E402

TIMING = {"wall_s"}


def _table(out):
    with (out / "scores.csv").open(newline="") as fh:
        return {r["slide"]: {k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)}


def _summary(folder):
    s = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIMING}


def _cfg() -> ScoreConfig:
    return ScoreConfig(batch_size=4, workers=1, read_ahead=1)


@pytest.fixture(scope="module")
def local_ref(slide_batch, tmp_path_factory):
    """The local path's outputs of the batch (the reference every Ray run must reproduce)."""
    out = tmp_path_factory.mktemp("local") / "out"
    return out, score_slides(slide_batch, out, _cfg(), detector=ColourDetector(), report=False)


def _same_as_local(out, local_out) -> None:
    t_local, t_ray = _table(local_out), _table(out)
    assert list(t_ray) == list(t_local)  # every slide exactly once, in input order
    for name, row in t_local.items():
        assert t_ray[name] == row, name  # status, counts, category, QC, tiles ... every column
    for name in ("s1", "s2", "s3", "s4"):
        a, b = local_out / name, out / name
        assert _summary(b) == _summary(a), name
        assert (b / "detections.geojson").read_text() == (a / "detections.geojson").read_text()
        assert (b / "overlay.png").read_bytes() == (a / "overlay.png").read_bytes()


def _run_in_thread(fn, *args, **kwargs):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc
        box["end"] = time.time()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _wait_for(pool, predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        stats = pool.stats(timeout=1.0)
        if stats and predicate(stats[0]):
            return stats[0]
        time.sleep(0.05)
    raise AssertionError("the model actor never got there")


def test_ray_gives_the_local_outputs_field_by_field(ray_runtime, slide_batch, local_ref, tmp_path):
    local_out, local = local_ref
    rc = RayConfig(actors=2, actor_cpus=0.5, slides_in_flight=3, tiles_in_flight=3)
    ray_run = score_slides_ray(
        slide_batch, tmp_path / "ray", _cfg(), rc, detector_factory=ColourDetector, report=True
    )
    assert ray_run.counts == local.counts == {"ok": 4, "failed": 1, "skipped": 0}
    assert ray_run.exit_code == 5 and [i.name for i in ray_run.items] == [i.name for i in local.items]
    by = {i.name: i for i in ray_run.items}
    assert by["s5_corrupt"].status == "failed" and by["s5_corrupt"].reason == local.items[4].reason
    _same_as_local(tmp_path / "ray", local_out)
    assert sum(int(r["ptc_total"] or 0) for r in _table(local_out).values()) > 0
    for i_ray, i_loc in zip(ray_run.items, local.items):
        assert {k: v for k, v in i_ray.metrics.items() if k not in TIMING | {"ray"}} == {
            k: v for k, v in i_loc.metrics.items() if k not in TIMING
        }
    assert not (tmp_path / "ray" / "s5_corrupt").exists()
    assert (tmp_path / "ray" / "report.html").is_file()
    assert ray_run.summary["ray"]["actors"] == 2 and ray_run.summary["slides"] == 5
    # --resume on Ray keeps the finished slides and re-tries the failed one, as locally
    again = score_slides_ray(slide_batch, tmp_path / "ray", _cfg(), rc, detector_factory=ColourDetector,
                             resume=True, report=False)  # fmt: skip
    assert again.counts == {"ok": 0, "failed": 1, "skipped": 4}


def test_killed_model_actor_loses_no_slide_and_counts_none_twice(
    ray_runtime, slide_batch, local_ref, tmp_path
):
    import functools

    local_out, _local = local_ref
    rc = RayConfig(actors=1, actor_cpus=0.5, slides_in_flight=4, tiles_in_flight=4, max_restarts=2)
    pool = ModelPool(functools.partial(ColourDetector, 0.3), batch_size=2, ray_cfg=rc)
    try:
        first = _wait_for(pool, lambda s: True)
        th, box = _run_in_thread(
            score_slides_ray, slide_batch, tmp_path / "out", _cfg(), rc, pool=pool, report=False
        )
        _wait_for(pool, lambda s: s["tiles"] >= 2)  # mid-run: some tiles done, others queued
        ray_runtime.kill(pool.actors[0], no_restart=False)
        th.join(timeout=180)
        assert not th.is_alive() and "error" not in box, box.get("error")
        after = pool.stats(timeout=10.0)[0]
    finally:
        pool.shutdown()
    assert after["pid"] != first["pid"] and after["tiles"] >= 1  # restarted, and it re-ran tiles
    run = box["result"]
    assert run.counts == {"ok": 4, "failed": 1, "skipped": 0}
    assert sorted(i.name for i in run.items) == ["s1", "s2", "s3", "s4", "s5_corrupt"]
    _same_as_local(tmp_path / "out", local_out)  # same counts: no tile lost, none counted twice


def test_high_priority_job_submitted_after_a_backlog_finishes_first(ray_runtime, slide_batch, tmp_path):
    import functools
    import shutil

    s1, _s2, s3, s4 = slide_batch[:4]
    copies = tmp_path / "backlog"
    copies.mkdir()
    backlog = []  # distinct files: a slide given twice in one batch is scored once
    for i in range(3):
        for src in (s4, s1):
            backlog.append(shutil.copy(src, copies / f"{src.stem}_{i}{src.suffix}"))
    # 18 tissue tiles at 0.8 s each (sleep, no CPU): ~14 s of model time
    # 3 backlog slide tasks (0.75 CPU) + the actor (0.5) leave room for the STAT job's slide task
    low = RayConfig(actors=1, actor_cpus=0.5, slides_in_flight=3, tiles_in_flight=8, priority=0)
    high = RayConfig(actors=1, actor_cpus=0.5, priority=10, deadline_s=60)
    pool = ModelPool(functools.partial(ColourDetector, 0.8), batch_size=2, ray_cfg=low)
    try:
        _wait_for(pool, lambda s: True)
        th_a, a = _run_in_thread(
            score_slides_ray, backlog, tmp_path / "a", _cfg(), low, pool=pool, report=False
        )
        _wait_for(pool, lambda s: s["tiles"] >= 2 and s["queued"] >= 4)  # the backlog is waiting
        th_b, b = _run_in_thread(
            score_slides_ray, [s3], tmp_path / "b", _cfg(), high, pool=pool, report=False
        )
        th_b.join(timeout=180)
        th_a.join(timeout=180)
        order = pool.stats(timeout=10.0)[0]["order"]
    finally:
        pool.shutdown()
    assert "error" not in a and "error" not in b, (a.get("error"), b.get("error"))
    assert a["result"].counts["ok"] == 6 and b["result"].counts["ok"] == 1
    assert b["end"] < a["end"], order  # submitted last, finished first
    jobs = list(dict.fromkeys(order))
    assert len(jobs) == 2 and order[-1] == jobs[0]  # the backlog's job still had tiles when B was done


def test_jobs_on_a_cluster_share_named_actors_that_end_when_idle(ray_runtime, slide_batch, tmp_path):
    rc = RayConfig(actors=1, actor_cpus=0.5, share_actors=True, idle_exit_s=3.0)
    one = score_slides_ray(slide_batch[2:3], tmp_path / "a", _cfg(), rc, detector_factory=ColourDetector)
    two = score_slides_ray(slide_batch[2:3], tmp_path / "b", _cfg(), rc, detector_factory=ColourDetector)
    n = one.summary["ray"]["tiles_inferred"]
    assert n >= 1 and two.summary["ray"]["tiles_inferred"] == 2 * n  # the second job found the same actor
    names = [a["name"] for a in ray_runtime.util.list_named_actors(all_namespaces=True)]
    shared = [x for x in names if x.startswith("medseg-slide-score-")]
    assert len(shared) == 1
    end = time.time() + 60
    while time.time() < end:  # idle past idle_exit_s: it ends itself and frees its CPU
        try:
            ray_runtime.get_actor(shared[0], namespace="medseg")
        except ValueError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the shared actor did not end when idle")
