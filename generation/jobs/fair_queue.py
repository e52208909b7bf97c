"""The fair-share job queue: start-time fair queuing (SFQ) across users, with batching.

Each flow (a member of a guild) keeps its own FIFO of jobs, so a user's jobs are never reordered;
only the head of each flow carries a start tag, and a heap of heads gives the next job in O(log n).
A head's tag is max(virtual time, the flow's last finish tag): an idle user cannot bank credit, and
a user with 40 queued jobs advances by one job's cost per job while others are served in between.
Finish tags are charged at dequeue with the estimated work / weight and corrected when the job's
measured time comes back.

Each head sits in one heap per batch key, and a small dict holds the top of every key heap: the
next job is the least of those tops, and the batch fills from the top of the leader's key heap, so
taking a job costs one heap operation (a replace when the flow's next job shares the key). Heap
entries are plain ints that order like (start tag, arrival seq) and carry the flow's slot in their
low bits, because a heap of ints sifts several times faster than one of tuples and a slot finds
the flow by list index; tags closer than 2**-32 work units count as equal and go in arrival order.

A measured cost that lowers a head's tag re-tags it at once (it may now come first). One that
raises it only marks the flow: the head is re-tagged if it reaches the top of its heap, or by
the next rebuild, which runs as jobs end once outdated entries (raised heads, superseded entries
of cancelled or corrected heads) reach half the queued flows. So taking a job seldom meets an
outdated entry, memory stays proportional to queued jobs, and the order is exactly SFQ's.

Pure and synchronous: no I/O, no asyncio; the clock is injected.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush, heapreplace
from typing import Generic, TypeVar

from generation.errors import QueueRefused
from generation.jobs.cost import SecondsPerUnit

T = TypeVar("T")

Flow = tuple[int, int]  # (guild_id, user_id)

# A head's heap entry: its start tag in units of 2**-32 work units, then its arrival seq (room for
# 2**40 jobs), so equal tags go in arrival order, then its flow's slot in the low bits, which finds
# the flow by list index instead of a dictionary of entries.
_SLOT_BITS = 24
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_SEQ_SHIFT = _SLOT_BITS + 40
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
    # Set by the queue: the job's flow while it is queued or running, and, from dequeue until it
    # is settled, its batch and the weight it was charged with (so a later set_weight cannot skew
    # the correction). Kept on the job so that taking it touches no dictionary.
    _state: _FlowState[T] | None = field(default=None, init=False, repr=False)
    _batch: _Batch | None = field(default=None, init=False, repr=False)
    _weight: float = field(default=1.0, init=False, repr=False)


@dataclass(eq=False, slots=True)
class _FlowState(Generic[T]):
    key: Flow
    finish: float  # finish tag of the flow's last dequeued job
    jobs: deque[QueuedJob[T]] = field(default_factory=deque)  # queued, in order; the head first
    floor: float = 0.0  # virtual time when the current head became head
    head_tag: float = 0.0  # the tag in the head's heap entry
    # The flow's finish moved up after the head's entry was made, so the head's true start tag,
    # max(floor, finish), is above head_tag: the entry is re-tagged when it reaches the top.
    raised: bool = False
    entry: int = -1  # the head's live heap entry; -1 while nothing is queued
    slot: int = -1  # its index in FairQueue._slots while it has a live entry
    entry_key: Hashable = None  # the batch key of the heap that entry is in
    in_service: int = 0


class _Batch:
    """Jobs taken together: when, their estimated work, and how many are not yet settled. No
    __init__, so making one on the dequeue path costs no Python call."""

    __slots__ = ("open_jobs", "started", "work")
    started: float
    work: float
    open_jobs: int


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
        self._jobs: dict[int, QueuedJob[T]] = {}  # queued and running (dequeued, not settled) jobs
        self._queued = 0
        self._weights: dict[Flow, float] = {}  # only flows whose weight is not 1
        if capacity > _SLOT_MASK:
            raise ValueError(f"capacity is at most {_SLOT_MASK} jobs")
        # Flows with queued jobs by slot; an entry is live if its slot's flow still has it.
        self._slots: list[_FlowState[T] | None] = []
        self._free_slots: list[int] = []
        self._heads = 0  # flows with queued jobs
        self._by_key: dict[Hashable, list[int]] = {}  # batch key -> heap of head entries
        # Batch key -> the top of its heap, kept live: the least of them is the next job. A dict
        # rather than a heap of tops, because there are few keys and min() over them costs less.
        self._tops: dict[Hashable, int] = {}
        # Superseded heap entries and raised heads since the heaps were last rebuilt: the rebuild,
        # linear in queued flows, clears both at once, so they seldom reach the top of a heap.
        self._outdated = 0
        # Flows with nothing queued or running whose finish tag is still ahead of virtual time;
        # they are forgotten once virtual time passes it (forgetting earlier would let them bank).
        self._idle: list[tuple[float, Flow]] = []
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
        if self._queued + count > self.capacity:
            raise QueueRefused(f"the queue is full ({self.capacity} jobs); try again in a few minutes")

    def submit(self, job: QueuedJob[T], *, bypass_limits: bool = False) -> None:
        """Queue a job behind its flow's others. `bypass_limits` is for jobs accepted before a restart."""
        if job.id in self._jobs:
            raise ValueError(f"job {job.id} is already queued or running")
        if not bypass_limits:
            self.check_can_submit(job.flow)
        job.seq = next(self._seq)
        state = self._state(job.flow)
        job._state, job._batch = state, None
        state.jobs.append(job)
        self._jobs[job.id] = job
        self._queued += 1
        if len(state.jobs) == 1:
            self._new_head(state)

    # Service

    def _first_key_on(self, model: Hashable) -> Hashable | None:
        """The batch key whose top head runs on `model` and comes first in fair order (O(batch keys))."""
        slots = self._slots
        for state in [slots[top & _SLOT_MASK] for top in self._tops.values()]:
            while state.raised:  # type: ignore[union-attr]  # a raised head's true place is lower
                self._retag(state)  # type: ignore[arg-type]
                state = slots[self._tops[state.entry_key] & _SLOT_MASK]  # type: ignore[union-attr]
        on_model = [top for top in self._tops.values() if slots[top & _SLOT_MASK].jobs[0].model == model]  # type: ignore[union-attr]
        return slots[min(on_model) & _SLOT_MASK].entry_key if on_model else None  # type: ignore[union-attr]

    def take_batch(self, max_images: int, prefer: Hashable = None) -> list[QueuedJob[T]]:
        """The next job in fair order plus, in fair order, following flow heads with its batch key,
        up to `max_images` images in all. Empty when nothing is queued; never waits.

        With `prefer` (the model the worker has loaded), the first head on that model in fair order
        leads instead of a fair leader on another model, unless that leader's flow was already
        passed over last time: a model switch is put off by one batch at most."""
        tops, slots = self._tops, self._slots
        while True:
            if not tops:
                return []
            leader: _FlowState[T] = slots[min(tops.values()) & _SLOT_MASK]  # type: ignore[assignment]
            if not leader.raised:
                break
            self._retag(leader)
        key = leader.entry_key
        preferred = None
        if prefer is not None and self._passed_over != leader.key and leader.jobs[0].model != prefer:
            preferred = self._first_key_on(prefer)
            if preferred is not None:  # the leader stays on top of its heap: it leads next time
                self._passed_over, key = leader.key, preferred
        elif self._passed_over == leader.key:
            self._passed_over = None
        by_key = self._by_key
        heap = by_key[key]  # the leading entry is its top
        # Dequeue heads from the top of `heap`, charging each flow its estimated cost; inlined, with
        # locals for attributes and comparisons instead of max(), because this is the hot path.
        weights = self._weights
        vtime, max_finish = self._vtime, self._max_finish
        running = _Batch()
        running.started = self._clock()
        batch: list[QueuedJob[T]] = []
        work = 0.0
        room = max_images
        while True:
            state = slots[heap[0] & _SLOT_MASK]  # type: ignore[assignment]  # live: see the loop's end
            if state.raised:
                self._retag(state)
            else:
                jobs = state.jobs
                job = jobs[0]
                if batch and job.images > room:
                    break
                jobs.popleft()
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
                job._batch, job._weight = running, weight
                batch.append(job)
                work += job.work
                room -= job.images
                if jobs:
                    head = jobs[0]
                    tag = state.head_tag = finish if finish > vtime else vtime
                    entry = state.entry = (  # _order, inlined
                        (int(tag * _TAG_SCALE) << _SEQ_SHIFT) | (head.seq << _SLOT_BITS) | state.slot
                    )
                    if head.batch_key == key:
                        heapreplace(heap, entry)
                    else:  # to another key's heap, whose top is live: the entry tops it or not
                        heappop(heap)
                        other = state.entry_key = head.batch_key
                        other_heap = by_key.get(other)
                        if other_heap is None:
                            by_key[other] = [entry]
                            tops[other] = entry
                        else:
                            heappush(other_heap, entry)
                            if other_heap[0] is entry:
                                tops[other] = entry
                else:
                    self._vacate(state)
                    heappop(heap)
            while heap:  # drop superseded entries, so the top is live
                entry = heap[0]
                state = slots[entry & _SLOT_MASK]  # type: ignore[assignment]
                if state is not None and state.entry == entry:
                    break
                heappop(heap)
            if room <= 0 or not heap:
                break
        if heap:
            tops[key] = heap[0]
        else:
            del by_key[key], tops[key]
        self._vtime, self._max_finish = vtime, max_finish
        self._queued -= len(batch)
        running.work, running.open_jobs = work, len(batch)
        self._batches.add(running)
        if not self._queued:
            self._end_busy_period()
        return batch

    def complete(self, job_ids: Iterable[int], elapsed_s: float) -> None:
        """Jobs that ran together in one engine call finished after `elapsed_s`: update the rate
        and correct each flow's charge by the difference between measured and estimated cost."""
        taken = self._taken(job_ids)
        work = 0.0
        for job in taken:
            work += job.work
        if self.rate.measured and self.rate.value > 0 and work > 0:
            ratio = elapsed_s / (self.rate.value * work)
            ratio = min(MAX_CORRECTION, max(1 / MAX_CORRECTION, ratio)) - 1
            for job in taken:
                self._correct(job._state, job.work * ratio / job._weight)  # type: ignore[arg-type]
        self.rate.observe(elapsed_s, work)
        for job in taken:
            self._settle(job)
        self._forget_idle_flows()
        self._tidy()

    def release(self, job_ids: Iterable[int]) -> None:
        """Dequeued jobs that ended without a measurement (failed, cancelled); already settled ids
        are ignored."""
        for job in self._taken(job_ids):
            self._settle(job)
        self._forget_idle_flows()

    def requeue_front(self, job: QueuedJob[T]) -> None:
        """Put a dequeued job (its worker died) back ahead of its flow's other jobs, refunding its
        charge so the flow is not billed twice."""
        known = self._jobs.get(job.id)
        if known is not None and known._batch is None:
            raise ValueError(f"job {job.id} is already queued")
        state = self._state(job.flow)
        state.jobs.appendleft(job)  # before settling: a flow with a queued job is never forgotten
        if known is not None:
            state.finish -= known.work / known._weight
            self._settle(known)
        job._state, job._batch = state, None
        self._jobs[job.id] = job
        self._queued += 1
        self._new_head(state)

    def cancel(self, job_id: int) -> bool:
        """Remove a queued job; False if it is not queued (running jobs are the worker's)."""
        job = self._jobs.get(job_id)
        if job is None or job._batch is not None:
            return False
        del self._jobs[job_id]
        self._queued -= 1
        state = job._state
        assert state is not None
        was_head = state.jobs[0] is job
        state.jobs.remove(job)  # O(jobs the member has queued), which max_per_flow bounds
        job._state = None
        if was_head:
            self._new_head(state)
        if not self._queued:
            self._end_busy_period()
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
        return self._queued

    def __contains__(self, job_id: object) -> bool:
        job = self._jobs.get(job_id)  # type: ignore[call-overload]
        return job is not None and job._batch is None

    def jobs_of(self, flow: Flow) -> list[QueuedJob[T]]:
        state = self._flows.get(flow)
        return list(state.jobs) if state else []

    def position(self, job_id: int, *, workers: int = 1) -> tuple[int, float] | None:
        """(jobs served before it, seconds until it is done) if no new job arrived; O(n).

        The ETA counts the running batches' remaining time and the work ahead shared among
        `workers`, then the job's own run, at the measured seconds per work unit."""
        own = self._jobs.get(job_id)
        if own is None or own._batch is not None or own._state is None:
            return None
        target = next((tag, seq) for tag, seq, job in self._forecast(own._state) if job is own)
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
        tag, weight = max(state.floor, state.finish), self.weight(state.key)
        for job in state.jobs:
            yield tag, job.seq, job
            tag += job.work / weight

    def _taken(self, job_ids: Iterable[int]) -> list[QueuedJob[T]]:
        """The dequeued, unsettled jobs among `job_ids`, no longer tracked by id."""
        jobs, taken = self._jobs, []
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is not None and job._batch is not None:
                del jobs[job_id]
                taken.append(job)
        return taken

    def _settle(self, job: QueuedJob[T]) -> None:
        batch, state = job._batch, job._state
        assert batch is not None and state is not None
        job._batch = job._state = None
        batch.open_jobs -= 1
        if batch.open_jobs == 0:
            self._batches.discard(batch)
        state.in_service -= 1
        if not state.in_service and not state.jobs:
            self._forget_if_idle(state)

    def _correct(self, state: _FlowState[T], delta: float) -> None:
        """Move the flow's finish tag by `delta`. A head whose start tag goes down is re-tagged now
        (it may now come first); one whose tag goes up is only marked: the next rebuild re-tags it,
        or, should it reach the top of a heap first, it is re-tagged there."""
        finish = state.finish = state.finish + delta
        if finish > self._max_finish:
            self._max_finish = finish
        if not state.jobs:
            return
        tag = finish if finish > state.floor else state.floor
        if tag > state.head_tag:
            if not state.raised:
                state.raised = True
                self._outdated += 1
        elif tag < state.head_tag:
            self._retag(state)

    def _retag(self, state: _FlowState[T]) -> None:
        """Give the flow's head the entry for its true start tag, max(floor, finish). Never
        rebuilds the heaps, so callers may hold on to a key heap."""
        old, key = state.entry, state.entry_key
        tag = state.head_tag = max(state.floor, state.finish)
        state.raised = False
        entry = _order(tag, state.jobs[0].seq, state.slot)
        if entry == old:
            return
        state.entry = entry
        heap = self._by_key[key]
        if heap[0] == old:
            heapreplace(heap, entry)
        else:
            heappush(heap, entry)
            self._outdated += 1
        self._settle_top(key)

    def _new_head(self, state: _FlowState[T]) -> None:
        """The flow's head changed: it can start no earlier than now in virtual time."""
        state.floor = self._vtime
        state.raised = False
        old, old_key = state.entry, state.entry_key
        if not state.jobs:
            if old >= 0:
                self._vacate(state)
                self._outdated += 1
                self._settle_top(old_key)
            self._forget_if_idle(state)
            return
        if old < 0:
            self._occupy(state)
        state.head_tag = max(state.floor, state.finish)
        head = state.jobs[0]
        entry = _order(state.head_tag, head.seq, state.slot)
        if entry == old:
            return
        if old >= 0:
            self._outdated += 1  # the old entry is left in its heap until it surfaces or a rebuild
        state.entry, state.entry_key = entry, head.batch_key
        self._push_entry(entry, head.batch_key)
        if old >= 0 and old_key != head.batch_key:
            self._settle_top(old_key)
        self._tidy()

    def _occupy(self, state: _FlowState[T]) -> None:
        """Give a flow that now has queued jobs a slot for its entries."""
        if self._free_slots:
            state.slot = self._free_slots.pop()
            self._slots[state.slot] = state
        else:
            state.slot = len(self._slots)
            self._slots.append(state)
        self._heads += 1

    def _vacate(self, state: _FlowState[T]) -> None:
        """The flow has no queued job left: its entry is superseded and its slot free."""
        self._slots[state.slot] = None
        self._free_slots.append(state.slot)
        state.slot = state.entry = -1
        self._heads -= 1

    def _flow_of(self, entry: int) -> _FlowState[T] | None:
        """The flow whose live entry this is; None for a superseded entry."""
        state = self._slots[entry & _SLOT_MASK]
        return state if state is not None and state.entry == entry else None

    def _push_entry(self, entry: int, key: Hashable) -> None:
        heap = self._by_key.get(key)
        if heap is None:
            heap = self._by_key[key] = []
        heappush(heap, entry)
        self._settle_top(key)

    def _settle_top(self, key: Hashable) -> None:
        """Drop superseded entries from the top of the key's heap and record its top in _tops."""
        heap = self._by_key.get(key)
        if heap is None:
            return
        while heap and self._flow_of(heap[0]) is None:
            heappop(heap)
        if heap:
            self._tops[key] = heap[0]
        else:
            del self._by_key[key], self._tops[key]

    def _tidy(self) -> None:
        """Rebuild the heaps once outdated entries reach half the live ones: that bounds the heaps
        by 1.5x the queued flows, at O(1) amortized cost, and keeps the dequeue path clear of them.
        Never called from take_batch, which holds on to a key heap."""
        if self._outdated > self._heads // 2 + 8:
            self._rebuild_heaps()

    def _rebuild_heaps(self) -> None:
        """New heaps from the live entries, with raised heads re-tagged."""
        by_key: dict[Hashable, list[int]] = {}
        for state in self._slots:
            if state is None:
                continue
            if state.raised:
                state.raised = False
                state.head_tag = max(state.floor, state.finish)
                state.entry = _order(state.head_tag, state.jobs[0].seq, state.slot)
            heap = by_key.get(state.entry_key)
            if heap is None:
                by_key[state.entry_key] = [state.entry]
            else:
                heap.append(state.entry)
        for heap in by_key.values():
            heapify(heap)
        self._by_key = by_key
        self._tops = {key: heap[0] for key, heap in by_key.items()}
        self._outdated = 0

    def _forget_if_idle(self, state: _FlowState[T]) -> None:
        if state.jobs or state.in_service:
            return
        if state.finish <= self._vtime:
            del self._flows[state.key]
        else:
            heappush(self._idle, (state.finish, state.key))

    def _end_busy_period(self) -> None:
        """The backlog drained (SFQ's end of a busy period): nobody waits, so nobody is owed
        anything; all flows start level again, and every heap entry is stale."""
        self._vtime = max(self._vtime, self._max_finish)
        self._by_key.clear()
        self._tops.clear()
        self._slots.clear()
        self._free_slots.clear()
        self._outdated = 0

    def _forget_idle_flows(self) -> None:
        """Forget the idle flows virtual time has passed; done as jobs end, off the dequeue path."""
        while self._idle and self._idle[0][0] <= self._vtime:
            _, flow = heappop(self._idle)
            state = self._flows.get(flow)
            if state is not None:
                self._forget_if_idle(state)


def _order(tag: float, seq: int, slot: int) -> int:
    """A heap entry ordering like (tag, seq) and naming the flow's slot; tags are never negative."""
    return (int(tag * _TAG_SCALE) << _SEQ_SHIFT) | (seq << _SLOT_BITS) | slot
