"""The S^3DNN scheduling logic without Ray: priority + EDF order, the fairness bound, batch fusion."""

from __future__ import annotations

import math

import pytest

from medseg.scale.governor import DeadlineQueue, Governor, Request


def _req(job="a", deadline=math.inf, priority=0, group=None, shape=(4, 4, 3), arrival=0.0):
    return Request(payload=None, group=group or job, job=job, priority=priority, deadline=deadline,
                   arrival=arrival, shape=shape)  # fmt: skip


def _drain(q: DeadlineQueue) -> list[Request]:
    out = []
    while (r := q.pop()) is not None:
        out.append(r)
    return out


def test_edf_serves_earliest_deadline_first_then_arrival_order():
    q = DeadlineQueue(fair_every=0)
    for job, dl in [("late", 30.0), ("none", math.inf), ("soon", 5.0), ("mid", 10.0), ("none2", math.inf)]:
        q.push(_req(job, deadline=dl))
    assert [r.job for r in _drain(q)] == ["soon", "mid", "late", "none", "none2"]
    assert len(q) == 0 and q.pop() is None


def test_priority_comes_before_deadline():
    q = DeadlineQueue(fair_every=0)
    q.push(_req("urgent-low", deadline=1.0, priority=0))
    q.push(_req("stat", deadline=math.inf, priority=5))
    assert [r.job for r in _drain(q)] == ["stat", "urgent-low"]


@pytest.mark.parametrize("fair_every", [2, 3, 4])
def test_fairness_bound_background_gets_every_nth_service(fair_every):
    """A backlog of background tiles keeps arriving urgent tiles' company: every n-th service is
    the oldest waiting request, so the background job advances at >= 1/n of the services."""
    q = DeadlineQueue(fair_every=fair_every)
    for _ in range(10):
        q.push(_req("background"))
    served = []
    for k in range(40):  # a steady stream of urgent work, never empty
        q.push(_req("stat", deadline=float(k), priority=9))
        served.append(q.pop().job)
    last = max(i for i, job in enumerate(served) if job == "background")
    for start in range(0, last - fair_every + 1, fair_every):  # while background work is waiting
        assert "background" in served[start : start + fair_every], served
    assert last < 10 * fair_every
    assert served.count("background") == 10  # the whole backlog got through within the bound


def test_without_the_bound_background_starves_and_fifo_ignores_deadlines():
    q = DeadlineQueue(fair_every=0)
    q.push(_req("background"))
    served = []
    for k in range(20):
        q.push(_req("stat", deadline=float(k), priority=9))
        served.append(q.pop().job)
    assert "background" not in served  # why the bound exists
    fifo = DeadlineQueue(fair_every=1)
    fifo.push(_req("a", deadline=100.0))
    fifo.push(_req("b", deadline=1.0))
    assert [r.job for r in _drain(fifo)] == ["a", "b"]


def test_pop_with_match_leaves_the_others_queued_in_order():
    q = DeadlineQueue(fair_every=0)
    for i, shape in enumerate([(1,), (2,), (1,), (2,)]):
        q.push(_req(f"r{i}", deadline=float(i), shape=shape))
    assert q.pop(lambda r: r.shape == (2,)).job == "r1"
    assert [r.job for r in _drain(q)] == ["r0", "r2", "r3"]


def test_governor_fuses_tiles_of_many_slides_into_full_batches():
    now = [0.0]
    gov = Governor(4, max_wait_s=0.5, clock=lambda: now[0])
    for slide, n in [("s1", 3), ("s2", 2), ("s3", 1), ("s4", 2)]:  # every slide smaller than a batch
        for _ in range(n):
            gov.put(_req(slide))
    b1 = gov.next_batch()
    b2 = gov.next_batch()
    assert [len(b1), len(b2)] == [4, 4] and len({r.group for r in b1}) > 1
    assert gov.next_batch() == [] and len(gov) == 0


def test_per_slide_batching_keeps_slides_apart_and_waits_for_the_partial_batch():
    now = [0.0]
    gov = Governor(4, max_wait_s=0.5, fuse=False, clock=lambda: now[0])
    for slide, n in [("s1", 3), ("s2", 2)]:
        for _ in range(n):
            gov.put(_req(slide))
    assert gov.next_batch() == [] and gov.wait_s() == pytest.approx(0.5)  # nothing full yet
    now[0] = 0.6
    batches = [gov.next_batch(), gov.next_batch()]
    assert [[r.group for r in b] for b in batches] == [["s1"] * 3, ["s2"] * 2]


def test_governor_batches_only_equal_shapes_and_serves_the_deadline_first():
    now = [0.0]
    gov = Governor(2, max_wait_s=0.0, clock=lambda: now[0])
    gov.put(_req("bg", shape=(512, 512, 3)))
    gov.put(_req("bg", shape=(1024, 1024, 3)))
    gov.put(_req("stat", shape=(1024, 1024, 3), deadline=3.0))
    first = gov.next_batch()
    assert [r.job for r in first] == ["stat", "bg"] and {r.shape for r in first} == {(1024, 1024, 3)}
    assert [r.shape for r in gov.next_batch()] == [(512, 512, 3)]
    with pytest.raises(ValueError):
        Governor(0)
