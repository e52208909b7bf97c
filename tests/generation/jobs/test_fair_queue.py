"""The fair queue on its own: fairness, weights, limits, cancellation, position/ETA, batching, cost."""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterator
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.errors import QueueRefused
from generation.jobs.cost import SecondsPerUnit, work_units
from generation.jobs.fair_queue import FairQueue, Flow, QueuedJob
from sdbot.types import GenerationParams, PipelineKind

fast = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_queue(*, max_per_flow: int = 1000, capacity: int = 100_000, clock: Clock | None = None) -> FairQueue[None]:
    return FairQueue(max_per_flow=max_per_flow, capacity=capacity, clock=clock or Clock())


_ids = count(1)


def job(flow: Flow, work: float = 1.0, *, images: int = 1, key: Hashable = "k") -> QueuedJob[None]:
    return QueuedJob(next(_ids), flow, work, images, key, None)


def add(queue: FairQueue[None], flow: Flow, n: int = 1, work: float = 1.0, **kw: object) -> list[QueuedJob[None]]:
    jobs = [job(flow, work, **kw) for _ in range(n)]  # type: ignore[arg-type]
    for queued in jobs:
        queue.submit(queued)
    return jobs


def take_one(queue: FairQueue[None]) -> QueuedJob[None]:
    (taken,) = queue.take_batch(1)
    return taken


HEAVY, A, B, C = (1, 1), (1, 2), (1, 3), (1, 4)


# Fairness


def test_heavy_user_with_40_jobs_gets_only_its_share() -> None:
    queue = make_queue()
    add(queue, HEAVY, 40)
    served = [take_one(queue).flow for _ in range(5)]
    lights = [(1, 100 + n) for n in range(8)]
    for light in lights:
        add(queue, light)
    # Arriving behind 35 queued heavy jobs, the eight light jobs run within the next 9 (the
    # heavy user keeps at most its one turn among them).
    served = [take_one(queue).flow for _ in range(9)]
    assert set(lights) <= set(served)
    assert served.count(HEAVY) <= 1


def test_weights_split_service() -> None:
    queue = make_queue()
    queue.set_weight(A, 2.0)
    for flow in (A, B, C):
        add(queue, flow, 40)
    served = [take_one(queue).flow for _ in range(40)]
    assert abs(served.count(A) - 20) <= 1
    assert abs(served.count(B) - 10) <= 1
    assert abs(served.count(C) - 10) <= 1


def test_idle_user_cannot_bank_credit() -> None:
    queue = make_queue()
    add(queue, B, 30)
    for _ in range(20):  # A is idle while B runs alone
        take_one(queue)
    add(queue, A, 10)
    served = [take_one(queue).flow for _ in range(20)]
    # A does not get its idle time back as a burst: the two alternate.
    assert all(served[i : i + 3] != [A, A, A] for i in range(18))
    assert abs(served.count(A) - served.count(B)) <= 1


@st.composite
def arrival_traces(draw: st.DrawFn) -> tuple[list[float], list[tuple[int, float, int]]]:
    flows = draw(st.integers(2, 5))
    weights = [draw(st.sampled_from([1.0, 2.0, 3.0])) for _ in range(flows)]
    jobs = draw(
        st.lists(
            st.tuples(st.integers(0, flows - 1), st.integers(1, 8).map(float), st.integers(0, 60)),
            min_size=4,
            max_size=60,
        )
    )
    return weights, jobs


@fast
@given(arrival_traces())
def test_sfq_fairness_bound(trace: tuple[list[float], list[tuple[int, float, int]]]) -> None:
    """Over any stretch in which two flows stay backlogged, their normalized service differs by
    at most max cost / weight of each (the SFQ bound)."""
    weights, jobs = trace
    queue = make_queue()
    for flow, weight in enumerate(weights):
        queue.set_weight((0, flow), weight)
    pending = sorted(jobs, key=lambda item: item[2])
    now, served, backlogged = 0.0, [], []
    while pending or len(queue):
        if not len(queue):
            now = max(now, pending[0][2])
        while pending and pending[0][2] <= now:
            flow, work, _ = pending.pop(0)
            queue.submit(job((0, flow), work))
        backlogged.append({state for state in range(len(weights)) if queue.jobs_of((0, state))})
        taken = take_one(queue)
        served.append((taken.flow[1], taken.work))
        now += taken.work
    max_cost = {flow: max(work for f, work, _ in jobs if f == flow) for flow, _, _ in jobs}
    for f in max_cost:
        for g in max_cost:
            if f >= g:
                continue
            bound = max_cost[f] / weights[f] + max_cost[g] / weights[g] + 1e-9
            for start in range(len(served)):
                gap = 0.0
                for end in range(start, len(served)):
                    if not {f, g} <= backlogged[end]:
                        break
                    flow, work = served[end]
                    gap += work / weights[f] if flow == f else -work / weights[g] if flow == g else 0.0
                    assert abs(gap) <= bound


# Limits


def test_per_user_limit_and_capacity_refuse_with_reasons() -> None:
    queue = make_queue(max_per_flow=3, capacity=5)
    add(queue, A, 3)
    with pytest.raises(QueueRefused, match="you already have 3 jobs queued; wait for one to finish or /cancel one"):
        queue.check_can_submit(A)
    with pytest.raises(QueueRefused):
        queue.submit(job(A))
    assert len(queue) == 3
    add(queue, B, 2)
    with pytest.raises(QueueRefused, match=r"the queue is full \(5 jobs\); try again in a few minutes"):
        queue.submit(job(C))
    queue.submit(job(C), bypass_limits=True)  # recovered after a restart: accepted before
    queue.submit(job(A), bypass_limits=True)
    assert len(queue) == 7
    assert len(queue.jobs_of(A)) == 4


# Cancellation and requeue


def test_cancel_queued_jobs_anywhere_in_a_flow() -> None:
    queue = make_queue()
    a1, a2, a3 = add(queue, A, 3)
    (b1,) = add(queue, B)
    assert queue.cancel(a2.id)
    assert not queue.cancel(a2.id)
    assert queue.cancel(a1.id)  # the head: the flow's next job takes its place
    assert not queue.cancel(12345)
    assert a1.id not in queue and len(queue) == 2
    assert [take_one(queue).id for _ in range(2)] == [a3.id, b1.id]
    assert queue.take_batch(4) == []


def test_a_user_who_cancels_and_comes_back_waits_behind_later_arrivals() -> None:
    queue = make_queue()
    (a1,) = add(queue, A)
    (b1,) = add(queue, B)
    assert queue.cancel(b1.id)  # B has nothing left: the queue forgets B
    (c1,) = add(queue, C)
    (b2,) = add(queue, B)
    # B's cancelled job must not lend its place in line to B's new one.
    assert [take_one(queue).id for _ in range(3)] == [a1.id, c1.id, b2.id]


def test_requeue_front_puts_a_job_back_ahead_of_its_flow_and_refunds_it() -> None:
    queue = make_queue()
    a1, a2 = add(queue, A, 2)
    (b1,) = add(queue, B)
    assert take_one(queue) is a1
    queue.requeue_front(a1)  # its worker died
    assert [take_one(queue).id for _ in range(3)] == [a1.id, b1.id, a2.id]


# Position and ETA


@fast
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(1, 6).map(float)), min_size=1, max_size=40),
    st.lists(st.integers(0, 39), max_size=5),
    st.integers(0, 10),
)
def test_position_is_the_service_order(jobs: list[tuple[int, float]], cancels: list[int], served_first: int) -> None:
    queue = make_queue()
    queue.set_weight((0, 0), 2.0)
    queued = [job((0, flow), work) for flow, work in jobs]
    for item in queued[: len(queued) // 2]:
        queue.submit(item)
    for _ in range(min(served_first, len(queue))):
        take_one(queue)
    for item in queued[len(queued) // 2 :]:
        queue.submit(item)
    for index in cancels:
        if index < len(queued):
            queue.cancel(queued[index].id)
    positions = {item.id: queue.position(item.id) for item in queued if item.id in queue}
    order = [take_one(queue).id for _ in range(len(queue))]
    assert {job_id: place[0] for job_id, place in positions.items() if place} == {
        job_id: index for index, job_id in enumerate(order)
    }


def test_eta_uses_measured_rate_and_the_running_batch() -> None:
    clock = Clock()
    queue = make_queue(clock=clock)
    (first,) = add(queue, C, work=4.0)
    take_one(queue)
    clock.now = 2.0
    queue.complete([first.id], elapsed_s=2.0)  # 0.5 s per unit
    assert queue.rate.value == pytest.approx(0.5)
    add(queue, A, work=2.0)
    b1, b2 = add(queue, B, 2, work=2.0)
    take_one(queue)  # A's job runs: 1 s at the measured rate
    clock.now = 2.25
    position, eta = queue.position(b2.id)  # type: ignore[misc]
    assert position == 1  # behind b1
    assert eta == pytest.approx(0.75 + 1.0 + 1.0)  # running remainder, b1, itself
    assert queue.position(b2.id, workers=2)[1] == pytest.approx((0.75 + 1.0) / 2 + 1.0)  # type: ignore[index]
    assert queue.position(-1) is None  # ids start at 1: no job has this one


def test_measured_cost_corrects_the_flow_charge() -> None:
    def order_after(a2_seconds: float) -> list[Flow]:
        queue = make_queue()
        a1, a2, _ = add(queue, A, 3)
        add(queue, B, 3)
        for taken, seconds in ((a1, 1.0), (None, 1.0), (a2, a2_seconds)):
            got = take_one(queue)
            assert taken is None or got is taken
            queue.complete([got.id], elapsed_s=seconds)
        return [take_one(queue).flow for _ in range(3)]

    assert order_after(1.0) == [B, A, B]
    # A's second job took three times its estimate: A pays the difference before its next turn.
    assert order_after(3.0) == [B, B, A]


class PlainSfq:
    """The fair queue's rules written plainly, in O(queued jobs) per call: start tags computed when
    asked, the next job found by scanning. The fast queue (lazy re-tags, heap rebuilds, key heaps)
    must serve exactly as this does."""

    def __init__(self) -> None:
        self.vtime = self.max_finish = 0.0
        self.finish: dict[Flow, float] = {}
        self.floor: dict[Flow, float] = {}
        self.queued: dict[Flow, list[QueuedJob[None]]] = {}
        self.weights: dict[Flow, float] = {}
        self.charged: dict[int, tuple[QueuedJob[None], float]] = {}  # running job id -> (job, weight)
        self.rate = SecondsPerUnit()

    def _order(self, flow: Flow) -> tuple[int, int]:
        tag = max(self.floor[flow], self.finish[flow])
        return int(tag * 2**32), self.queued[flow][0].seq  # tags 2**-32 apart count as equal

    def _new_head(self, flow: Flow) -> None:
        self.floor[flow] = self.vtime

    def _end_busy_period_if_empty(self) -> None:
        if not any(self.queued.values()):
            self.vtime = max(self.vtime, self.max_finish)

    def submit(self, item: QueuedJob[None]) -> None:
        self.finish.setdefault(item.flow, self.vtime)
        line = self.queued.setdefault(item.flow, [])
        line.append(item)
        if len(line) == 1:
            self._new_head(item.flow)

    def take_batch(self, max_images: int) -> list[QueuedJob[None]]:
        waiting = [flow for flow, line in self.queued.items() if line]
        if not waiting:
            return []
        key = self.queued[min(waiting, key=self._order)][0].batch_key
        batch: list[QueuedJob[None]] = []
        room = max_images
        while room > 0:
            same_key = [flow for flow, line in self.queued.items() if line and line[0].batch_key == key]
            if not same_key:
                break
            flow = min(same_key, key=self._order)
            item = self.queued[flow][0]
            if batch and item.images > room:
                break
            tag = max(self.floor[flow], self.finish[flow])
            weight = self.weights.get(flow, 1.0)
            self.queued[flow].pop(0)
            self.vtime = max(self.vtime, tag)
            self.finish[flow] = tag + item.work / weight
            self.max_finish = max(self.max_finish, self.finish[flow])
            self.floor[flow] = self.vtime
            self.charged[item.id] = (item, weight)
            batch.append(item)
            room -= item.images
        self._end_busy_period_if_empty()
        return batch

    def complete(self, ids: list[int], elapsed_s: float) -> None:
        charges = [self.charged.pop(i) for i in ids if i in self.charged]
        work = sum(item.work for item, _ in charges)
        if self.rate.measured and self.rate.value > 0 and work > 0:
            ratio = min(4.0, max(0.25, elapsed_s / (self.rate.value * work))) - 1
            for item, weight in charges:
                self.finish[item.flow] += item.work * ratio / weight
                self.max_finish = max(self.max_finish, self.finish[item.flow])
        self.rate.observe(elapsed_s, work)

    def release(self, ids: list[int]) -> None:
        for i in ids:
            self.charged.pop(i, None)

    def requeue_front(self, item: QueuedJob[None]) -> None:
        self.queued.setdefault(item.flow, []).insert(0, item)
        item_and_weight = self.charged.pop(item.id, None)
        if item_and_weight:
            self.finish[item.flow] -= item.work / item_and_weight[1]
        self._new_head(item.flow)

    def cancel(self, item: QueuedJob[None]) -> bool:
        line = self.queued.get(item.flow, [])
        if item not in line:
            return False
        was_head = line[0] is item
        line.remove(item)
        if was_head and line:
            self._new_head(item.flow)
        self._end_busy_period_if_empty()
        return True


def random_operations(seed: int, count: int = 1500) -> Iterator[tuple]:  # type: ignore[type-arg]
    """A long random mix of every call, with measured times that move charges both ways."""
    rng = random.Random(seed)
    for _ in range(count):
        name = rng.choices(["submit", "take", "complete", "release", "requeue", "cancel", "weight"],
                           weights=[40, 25, 20, 3, 3, 6, 3])[0]
        if name == "submit":
            yield name, rng.randrange(8), rng.choice([0.5, 1.0, 2.0, 3.0]), rng.randint(1, 4), rng.choice("KLM")
        elif name == "take":
            yield name, rng.randint(1, 4)
        elif name == "complete":
            yield name, rng.randrange(10), rng.uniform(0.0, 6.0)
        elif name == "weight":
            yield name, rng.randrange(8), rng.choice([0.5, 1.0, 3.0])
        else:
            yield name, rng.randrange(100)


@pytest.mark.parametrize("seed", range(12))
def test_serves_exactly_as_plain_sfq_through_corrections_cancels_and_requeues(seed: int) -> None:
    queue, plain = make_queue(), PlainSfq()
    submitted: list[QueuedJob[None]] = []
    running: list[list[QueuedJob[None]]] = []
    for name, *args in random_operations(seed):
        if name == "submit":
            flow, work, images, key = args
            item = job((0, flow), work, images=images, key=key)
            queue.submit(item)
            plain.submit(item)  # the same object: the queue has set its arrival seq
            submitted.append(item)
        elif name == "take":
            batch = queue.take_batch(args[0])
            assert [item.id for item in batch] == [item.id for item in plain.take_batch(args[0])]
            if batch:
                running.append(batch)
        elif name in ("complete", "release", "requeue") and running:
            batch = running.pop(args[0] % len(running))
            ids = [item.id for item in batch]
            if name == "complete":
                queue.complete(ids, args[1])
                plain.complete(ids, args[1])
            elif name == "release":
                queue.release(ids)
                plain.release(ids)
            else:
                for item in reversed(batch):
                    queue.requeue_front(item)
                    plain.requeue_front(item)
        elif name == "cancel" and submitted:
            item = submitted[args[0] % len(submitted)]
            assert queue.cancel(item.id) == plain.cancel(item)
        elif name == "weight":
            queue.set_weight((0, args[0]), args[1])
            if args[1] == 1.0:
                plain.weights.pop((0, args[0]), None)
            else:
                plain.weights[(0, args[0])] = args[1]
        assert len(queue) == sum(len(line) for line in plain.queued.values())
    while batch := queue.take_batch(4):  # and the rest of the queue in the same order
        assert [item.id for item in batch] == [item.id for item in plain.take_batch(4)]
    assert plain.take_batch(4) == []


def test_memory_follows_queued_jobs() -> None:
    queue = make_queue()
    for user in range(2000):
        add(queue, (1, user))
    while len(queue):
        taken = queue.take_batch(1)
        queue.complete([t.id for t in taken], 0.01)
    assert not queue._flows
    assert not queue._tops and not queue._by_key and not queue._slots


# Batching


def test_batch_takes_matching_heads_in_fair_order_without_reordering_a_user() -> None:
    queue = make_queue()
    a1, a2, a3 = (job(A, key="K"), job(A, key="L"), job(A, key="K"))
    b1, b2 = job(B, key="K"), job(B, key="K")
    c1 = job(C, key="L")
    for item in (a1, a2, a3, b1, b2, c1):
        queue.submit(item)
    # a3 shares the key but may not overtake a2.
    assert [j.id for j in queue.take_batch(4)] == [a1.id, b1.id, b2.id]
    assert [j.id for j in queue.take_batch(4)] == [c1.id, a2.id]
    assert [j.id for j in queue.take_batch(4)] == [a3.id]


def test_batch_honours_max_images_and_big_jobs_run_alone() -> None:
    queue = make_queue()
    big = job(A, images=6)
    queue.submit(big)
    small = add(queue, B, 1, images=2) + add(queue, C, 1, images=2) + add(queue, HEAVY, 1, images=1)
    assert queue.take_batch(4) == [big]
    assert queue.take_batch(4) == small[:2]
    assert queue.take_batch(4) == small[2:]


@fast
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from("KLM"), st.integers(1, 5)), min_size=1, max_size=50))
def test_batches_are_uniform_bounded_and_keep_user_order(jobs: list[tuple[int, str, int]]) -> None:
    queue = make_queue()
    queued = [job((0, flow), float(images), images=images, key=key) for flow, key, images in jobs]
    for item in queued:
        queue.submit(item)
    served: list[QueuedJob[None]] = []
    while batch := queue.take_batch(4):
        assert len({item.batch_key for item in batch}) == 1
        assert len(batch) == 1 or sum(item.images for item in batch) <= 4
        served += batch
    assert sorted(item.id for item in served) == sorted(item.id for item in queued)
    for flow in {item.flow for item in queued}:
        assert [i.id for i in served if i.flow == flow] == [i.id for i in queued if i.flow == flow]


# Cost


def _params(pipeline: PipelineKind, *, size: int = 512, steps: int = 4, images: int = 1,
            strength: float | None = None) -> GenerationParams:
    return GenerationParams(pipeline=pipeline, seeds=tuple(range(images)), steps=steps, guidance=0.0,
                            width=size, height=size, strength=strength)


def test_work_units_scale_with_images_pixels_and_effective_steps() -> None:
    base = work_units(_params(PipelineKind.TEXT2IMG))
    assert base == pytest.approx(4.0)
    assert work_units(_params(PipelineKind.TEXT2IMG, images=4, size=1024)) == pytest.approx(16 * base)
    assert work_units(_params(PipelineKind.IMG2IMG, strength=0.5)) == pytest.approx(base / 2)
    assert work_units(_params(PipelineKind.UPSCALE)) > base


def test_rate_starts_from_first_measurement_then_averages() -> None:
    rate = SecondsPerUnit(alpha=0.5)
    assert not rate.measured
    rate.observe(10.0, 5.0)
    assert rate.value == pytest.approx(2.0)
    rate.observe(4.0, 1.0)
    assert rate.value == pytest.approx(3.0)
