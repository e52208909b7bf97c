"""The fair-share job queue: start-time fair queuing (SFQ) across users, with batching.

Each flow (a member of a guild) keeps its own FIFO of jobs, so a user's jobs are never reordered;
only the head of each flow carries a start tag, and a heap of heads gives the next job in O(log n).
A head's tag is max(virtual time, the flow's last finish tag): an idle user cannot bank credit, and
a user with 40 queued jobs advances by one job's cost per job while others are served in between.
Finish tags are charged at dequeue with the estimated work / weight and corrected when the job's
measured time comes back.

Each head sits in one heap per batch key, and a small heap holds the top of every key heap: the
next job is the least of those tops, and the batch fills from the top of the leader's key heap, so
taking a job costs one heap operation (a replace when the flow's next job shares the key). Heap
entries are plain ints that order like (start tag, arrival seq), because a heap of ints sifts
several times faster than one of tuples; tags closer than 2**-32 work units count as equal and go
in arrival order. A superseded entry (a head cancelled, a charge corrected while the head's entry
is not the top of its heap, where it is replaced in place) stays in its heap until it surfaces; the
heaps are rebuilt once such pushes outnumber live heads, so memory stays proportional to queued jobs.

Pure and synchronous: no I/O, no asyncio; the clock is injected.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from generation.errors import QueueRefused
from generation.jobs.cost import SecondsPerUnit

T = TypeVar("T")

Flow = tuple[int, int]  # (guild_id, user_id)

# A head's heap entry: its start tag in units of 2**-32 work units, then the arrival seq in the low
# bits (room for 2**40 jobs), so equal tags go in arrival order.
_SEQ_BITS = 40
_TAG_SCALE = float(2**32)

# A measured time more than this many times the estimate (or less than its inverse) is clamped when
# charged, so a one-off stall (a model load, a swap) does not punish the user who happened to hit it.
MAX_CORRECTION = 4.0


@dataclass(eq=False, slots=True)
class QueuedJob(Generic[T]):
    id: int
    flow: Flow
    work: float  # estimated work units (generation.jobs.cost.work_units)
    images: int
    batch_key: Hashable  # jobs with equal keys can run in one engine call
    payload: T
    model: Hashable = None  # the model it runs on (a worker prefers the one it has loaded)
    seq: int = field(default=-1, init=False)  # arrival order, set by the queue


@dataclass(eq=False, slots=True)
class _FlowState(Generic[T]):
    key: Flow
    finish: float  # finish tag of the flow's last dequeued job
    jobs: OrderedDict[int, QueuedJob[T]] = field(default_factory=OrderedDict)
    head: QueuedJob[T] | None = None  # the first of jobs
    floor: float = 0.0  # virtual time when the current head became head
    head_tag: float = 0.0
    entry: int = -1  # the head's live heap entry; -1 while nothing is queued
    entry_key: Hashable = None  # the batch key of the heap that entry is in
    in_service: int = 0


@dataclass(eq=False, slots=True)
class _Batch:
    started: float
    work: float
    open_jobs: int


# A dequeued job's charge: its flow, estimated work, the weight it was charged with (so a later
# set_weight cannot skew the correction) and its batch. A tuple: one is made per dequeued job.
_Charge = tuple[_FlowState[T], float, float, _Batch]


class FairQueue(Generic[T]):
    def __init__(
        self,
        *,
        max_per_flow: int,
        capacity: int,
        rate: SecondsPerUnit | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_flow = max_per_flow
        self.capacity = capacity
        self.rate = rate or SecondsPerUnit()
        self._clock = clock
        self._vtime = 0.0
        self._max_finish = 0.0
        self._seq = itertools.count()
        self._flows: dict[Flow, _FlowState[T]] = {}
        self._where: dict[int, _FlowState[T]] = {}  # queued job id -> its flow
        self._weights: dict[Flow, float] = {}  # only flows whose weight is not 1
        self._live: dict[int, _FlowState[T]] = {}  # each queued flow's head entry -> the flow
        self._by_key: dict[Hashable, list[int]] = {}  # batch key -> heap of head entries
        # The top of every key heap, plus superseded tops: the least live entry is the next job.
        self._tops: list[int] = []
        self._topped: dict[Hashable, int] = {}  # batch key -> the entry last pushed to _tops for it
        self._pushes = 0  # heap pushes since the heaps were last rebuilt
        # Flows with nothing queued or running whose finish tag is still ahead of virtual time;
        # they are forgotten once virtual time passes it (forgetting earlier would let them bank).
        self._idle: list[tuple[float, Flow]] = []
        self._charges: dict[int, _Charge] = {}  # dequeued, not yet finished: job id -> charge
        self._batches: set[_Batch] = set()
        # The flow last passed over for a head on the loaded model: it is never passed over twice
        # in a row, so preferring the loaded model delays a job by at most one batch (one switch).
        self._passed_over: Flow | None = None

    # Admission

    def check_can_submit(self, flow: Flow, count: int = 1) -> None:
        """Raise QueueRefused, with a reason fit for the user, if `flow` may not queue `count` more
        jobs now (one request can make several)."""
        state = self._flows.get(flow)
        queued = len(state.jobs) if state else 0
        if count > 1 and queued + count > self.max_per_flow:
            raise QueueRefused(
                f"this request makes {count} jobs and you have {queued} queued; "
                f"at most {self.max_per_flow} can wait at once"
            )
        if queued >= self.max_per_flow:
            jobs = "job" if queued == 1 else "jobs"
            raise QueueRefused(
                f"you already have {queued} {jobs} queued; wait for one to finish or /cancel one"
            )
        if len(self._where) + count > self.capacity:
            raise QueueRefused(f"the queue is full ({self.capacity} jobs); try again in a few minutes")

    def submit(self, job: QueuedJob[T], *, bypass_limits: bool = False) -> None:
        """Queue a job behind its flow's others. `bypass_limits` is for jobs accepted before a restart."""
        if job.id in self._where or job.id in self._charges:
            raise ValueError(f"job {job.id} is already queued or running")
        if not bypass_limits:
            self.check_can_submit(job.flow)
        job.seq = next(self._seq)
        state = self._state(job.flow)
        state.jobs[job.id] = job
        self._where[job.id] = state
        if len(state.jobs) == 1:
            self._new_head(state)

    # Service

    def _first_key_on(self, model: Hashable) -> Hashable | None:
        """The batch key whose top head runs on `model` and comes first in fair order (O(batch keys))."""
        best: tuple[int, Hashable] | None = None
        for key, heap in self._by_key.items():
            while heap and heap[0] not in self._live:
                heapq.heappop(heap)
            head = self._live[heap[0]].head if heap else None
            if head is not None and head.model == model and (best is None or heap[0] < best[0]):
                best = heap[0], key
        return best[1] if best else None

    def take_batch(self, max_images: int, prefer: Hashable = None) -> list[QueuedJob[T]]:
        """The next job in fair order plus, in fair order, following flow heads with its batch key,
        up to `max_images` images in all. Empty when nothing is queued; never waits.

        With `prefer` (the model the worker has loaded), the first head on that model in fair order
        leads instead of a fair leader on another model, unless that leader's flow was already
        passed over last time: a model switch is put off by one batch at most."""
        tops, live = self._tops, self._live
        heappop = heapq.heappop
        while tops and tops[0] not in live:
            heappop(tops)
        if not tops:
            return []
        leader = live[tops[0]]
        key = leader.entry_key
        preferred = None
        if prefer is not None and self._passed_over != leader.key and leader.head.model != prefer:  # type: ignore[union-attr]
            preferred = self._first_key_on(prefer)
            if preferred is not None:  # the leader's entry stays in _tops: it leads next time
                self._passed_over, key = leader.key, preferred
        elif self._passed_over == leader.key:
            self._passed_over = None
        if preferred is None:
            heappop(tops)
        heap = self._by_key[key]  # the leading entry is its top: every key heap's top is in _tops
        # Dequeue heads from the top of `heap`, charging each flow its estimated cost; inlined, with
        # locals for attributes and comparisons instead of max(), because this is the hot path.
        heapreplace, charges, where, weights = heapq.heapreplace, self._charges, self._where, self._weights
        vtime, max_finish = self._vtime, self._max_finish
        running = _Batch(self._clock(), 0.0, 0)
        batch: list[QueuedJob[T]] = []
        work = 0.0
        room = max_images
        while True:
            entry = heap[0]
            state = live[entry]
            job = state.head
            assert job is not None
            if batch and job.images > room:
                break
            jobs = state.jobs
            del jobs[job.id], where[job.id], live[entry]
            weight = weights.get(state.key, 1.0) if weights else 1.0
            tag = state.head_tag
            if tag > vtime:
                vtime = tag
            finish = state.finish = tag + job.work / weight
            if finish > max_finish:
                max_finish = finish
            state.in_service += 1
            # The next head can start no earlier than now in virtual time.
            state.floor = vtime
            charges[job.id] = (state, job.work, weight, running)
            batch.append(job)
            work += job.work
            room -= job.images
            if jobs:
                head = state.head = next(iter(jobs.values()))
                tag = state.head_tag = finish if finish > vtime else vtime
                entry = state.entry = (int(tag * _TAG_SCALE) << _SEQ_BITS) | head.seq  # _order, inlined
                live[entry] = state
                if head.batch_key == key:
                    heapreplace(heap, entry)
                else:
                    state.entry_key = head.batch_key
                    heappop(heap)
                    self._push_entry(entry, head.batch_key)
            else:
                state.head, state.entry = None, -1
                heappop(heap)
            if room <= 0:
                break
            while heap and heap[0] not in live:
                heappop(heap)
            if not heap:
                break
        self._vtime, self._max_finish = vtime, max_finish
        running.work, running.open_jobs = work, len(batch)
        self._batches.add(running)
        self._settle_top(key)
        if not where or (self._idle and self._idle[0][0] <= vtime):
            self._forget_idle_flows()
        return batch

    def complete(self, job_ids: Iterable[int], elapsed_s: float) -> None:
        """Jobs that ran together in one engine call finished after `elapsed_s`: update the rate
        and correct each flow's charge by the difference between measured and estimated cost."""
        pop = self._charges.pop
        charges = [charge for charge in map(pop, job_ids, itertools.repeat(None)) if charge is not None]
        work = 0.0
        for charge in charges:
            work += charge[1]
        if self.rate.measured and self.rate.value > 0 and work > 0:
            ratio = elapsed_s / (self.rate.value * work)
            ratio = min(MAX_CORRECTION, max(1 / MAX_CORRECTION, ratio)) - 1
            for state, job_work, weight, _ in charges:
                self._correct(state, job_work * ratio / weight)
        self.rate.observe(elapsed_s, work)
        for charge in charges:
            self._settle(charge)

    def release(self, job_ids: Iterable[int]) -> None:
        """Dequeued jobs that ended without a measurement (failed, cancelled); already settled ids
        are ignored."""
        for job_id in job_ids:
            charge = self._charges.pop(job_id, None)
            if charge is not None:
                self._settle(charge)

    def requeue_front(self, job: QueuedJob[T]) -> None:
        """Put a dequeued job (its worker died) back ahead of its flow's other jobs, refunding its
        charge so the flow is not billed twice."""
        if job.id in self._where:
            raise ValueError(f"job {job.id} is already queued")
        state = self._state(job.flow)
        state.jobs[job.id] = job
        state.jobs.move_to_end(job.id, last=False)
        self._where[job.id] = state
        charge = self._charges.pop(job.id, None)
        if charge is not None:
            state.finish -= charge[1] / charge[2]
            self._settle(charge)
        self._new_head(state)

    def cancel(self, job_id: int) -> bool:
        """Remove a queued job; False if it is not queued (running jobs are the worker's)."""
        state = self._where.pop(job_id, None)
        if state is None:
            return False
        was_head = next(iter(state.jobs)) == job_id
        del state.jobs[job_id]
        if was_head:
            self._new_head(state)
        self._forget_idle_flows()
        return True

    # Shares

    def weight(self, flow: Flow) -> float:
        return self._weights.get(flow, 1.0)

    def set_weight(self, flow: Flow, weight: float) -> None:
        """A flow with weight 2 gets twice the service of a weight-1 flow while both wait.
        Applies to jobs dequeued from now on."""
        if weight <= 0:
            raise ValueError("weight must be positive")
        if weight == 1.0:
            self._weights.pop(flow, None)
        else:
            self._weights[flow] = weight

    # Views

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def jobs_of(self, flow: Flow) -> list[QueuedJob[T]]:
        state = self._flows.get(flow)
        return list(state.jobs.values()) if state else []

    def position(self, job_id: int, *, workers: int = 1) -> tuple[int, float] | None:
        """(jobs served before it, seconds until it is done) if no new job arrived; O(n).

        The ETA counts the running batches' remaining time and the work ahead shared among
        `workers`, then the job's own run, at the measured seconds per work unit."""
        state = self._where.get(job_id)
        if state is None:
            return None
        own = state.jobs[job_id]
        target = next((tag, seq) for tag, seq, job in self._forecast(state) if job is own)
        ahead, ahead_work = 0, 0.0
        for other in self._flows.values():
            for tag, seq, job in self._forecast(other):
                if (tag, seq) >= target:
                    break
                ahead += 1
                ahead_work += job.work
        now = self._clock()
        seconds = self.rate.value
        running = sum(max(0.0, b.work * seconds - (now - b.started)) for b in self._batches)
        return ahead, (running + ahead_work * seconds) / max(1, workers) + own.work * seconds

    # Internals

    def _state(self, flow: Flow) -> _FlowState[T]:
        state = self._flows.get(flow)
        if state is None:
            # A new (or forgotten) flow starts at virtual time: the same as one that never left.
            state = self._flows[flow] = _FlowState(flow, finish=self._vtime)
        return state

    def _forecast(self, state: _FlowState[T]) -> Iterator[tuple[float, int, QueuedJob[T]]]:
        """The flow's queued jobs with the start tags they will get if nothing else changes: each
        job starts where the one before it finishes."""
        tag, weight = state.head_tag, self.weight(state.key)
        for job in state.jobs.values():
            yield tag, job.seq, job
            tag += job.work / weight

    def _settle(self, charge: _Charge) -> None:
        state, _, _, batch = charge
        batch.open_jobs -= 1
        if batch.open_jobs == 0:
            self._batches.discard(batch)
        state.in_service -= 1
        if not state.in_service and not state.jobs:
            self._forget_if_idle(state)

    def _correct(self, state: _FlowState[T], delta: float) -> None:
        """Move the flow's finish tag by `delta`, and its head's entry with it. Every completion
        comes here, so the head (unchanged) is re-tagged in place: when its old entry tops its
        heap, a replace leaves no superseded entry behind."""
        finish = state.finish = state.finish + delta
        if finish > self._max_finish:
            self._max_finish = finish
        head = state.head
        if head is None:
            return
        tag = state.head_tag = finish if finish > state.floor else state.floor
        entry = _order(tag, head.seq)
        old = state.entry
        if entry == old:
            return
        live, key = self._live, state.entry_key
        del live[old]
        state.entry = entry
        live[entry] = state
        heap = self._by_key[key]
        if heap[0] == old:
            heapq.heapreplace(heap, entry)
        else:
            heapq.heappush(heap, entry)
            self._pushes += 1
        self._settle_top(key)
        if self._pushes > 2 * len(live) + 64:
            self._rebuild_heaps()

    def _new_head(self, state: _FlowState[T]) -> None:
        """The flow's head changed: it can start no earlier than now in virtual time."""
        state.floor = self._vtime
        self._push_head(state)

    def _push_head(self, state: _FlowState[T]) -> None:
        """The flow's head or its tag changed: replace its heap entry."""
        old, old_key = state.entry, state.entry_key
        state.head = next(iter(state.jobs.values()), None)
        if not state.jobs:
            if old >= 0:
                del self._live[old]
                state.entry = -1
                self._settle_top(old_key)
            self._forget_if_idle(state)
            return
        state.head_tag = max(state.floor, state.finish)
        head = state.head
        assert head is not None
        entry = _order(state.head_tag, head.seq)
        if entry == old:
            return
        if old >= 0:
            del self._live[old]  # left in its heap until it surfaces
        state.entry, state.entry_key = entry, head.batch_key
        self._live[entry] = state
        self._push_entry(entry, head.batch_key)
        if old >= 0 and old_key != head.batch_key:
            self._settle_top(old_key)
        # Each push leaves at most one superseded entry behind in a key heap and one in _tops;
        # rebuilding after 2F + 64 pushes bounds the heaps by O(queued flows) at O(1) amortized cost.
        if self._pushes > 2 * len(self._live) + 64:
            self._rebuild_heaps()

    def _push_entry(self, entry: int, key: Hashable) -> None:
        heap = self._by_key.get(key)
        if heap is None:
            heap = self._by_key[key] = []
        heapq.heappush(heap, entry)
        self._pushes += 1
        self._settle_top(key)

    def _settle_top(self, key: Hashable) -> None:
        """Drop superseded entries from the top of the key's heap and make sure its top is in _tops."""
        heap = self._by_key.get(key)
        if heap is None:
            return
        while heap and heap[0] not in self._live:
            heapq.heappop(heap)
        if not heap:
            del self._by_key[key]
            self._topped.pop(key, None)
        elif self._topped.get(key) != heap[0]:
            heapq.heappush(self._tops, heap[0])
            self._topped[key] = heap[0]
            self._pushes += 1

    def _rebuild_heaps(self) -> None:
        self._by_key = {}
        for entry, state in self._live.items():
            self._by_key.setdefault(state.entry_key, []).append(entry)
        for heap in self._by_key.values():
            heapq.heapify(heap)
        self._topped = {key: heap[0] for key, heap in self._by_key.items()}
        self._tops = list(self._topped.values())
        heapq.heapify(self._tops)
        self._pushes = 0

    def _forget_if_idle(self, state: _FlowState[T]) -> None:
        if state.jobs or state.in_service:
            return
        if state.finish <= self._vtime:
            del self._flows[state.key]
        else:
            heapq.heappush(self._idle, (state.finish, state.key))

    def _forget_idle_flows(self) -> None:
        if not self._where:
            # The backlog drained (SFQ's end of a busy period): nobody waits, so nobody is owed
            # anything; all flows start level again, and every heap entry is stale.
            self._vtime = max(self._vtime, self._max_finish)
            self._by_key.clear()
            self._tops.clear()
            self._topped.clear()
            self._pushes = 0
        while self._idle and self._idle[0][0] <= self._vtime:
            _, flow = heapq.heappop(self._idle)
            state = self._flows.get(flow)
            if state is not None:
                self._forget_if_idle(state)



def _order(tag: float, seq: int) -> int:
    """A heap entry ordering like (tag, seq); tags are never negative."""
    return (int(tag * _TAG_SCALE) << _SEQ_BITS) | seq
