"""The fair queue's preference for the model a worker has loaded: taken among fair choices, and a
job on another model waits behind one switch at most."""

from __future__ import annotations

from itertools import count

from generation.jobs.fair_queue import FairQueue, Flow, QueuedJob

_ids = count(1)


def queue_with(*flows: tuple[Flow, str, int]) -> FairQueue[None]:
    queue: FairQueue[None] = FairQueue(max_per_flow=100, capacity=1000, clock=lambda: 0.0)
    for flow, model, jobs in flows:
        for _ in range(jobs):
            queue.submit(QueuedJob(next(_ids), flow, 1.0, 1, model, None, model=model))
    return queue


def serve(queue: FairQueue[None], loaded: str | None) -> list[tuple[Flow, str]]:
    """Take batches one at a time like a worker does (it prefers what it ran last)."""
    served = []
    while batch := queue.take_batch(1, prefer=loaded):
        queue.complete([job.id for job in batch], 1.0)
        loaded = batch[0].model  # type: ignore[assignment]
        served.append((batch[0].flow, loaded))
    return served


HEAVY, LIGHT, OTHER = (1, 1), (1, 2), (1, 3)


def test_the_loaded_model_goes_first_among_equally_fair_jobs() -> None:
    # Two members queue at once; the worker has B loaded: B's member goes first, then A's.
    queue = queue_with((HEAVY, "A", 1), (LIGHT, "B", 1))
    assert [model for _, model in serve(queue, loaded="B")] == ["B", "A"]


def test_a_light_member_on_another_model_waits_behind_one_switch_at_most() -> None:
    # A heavy member's 10 jobs on A (loaded); a light member's one job on B arrives first in fair
    # order once the heavy member has been served: it is served after at most one more A batch.
    queue = queue_with((LIGHT, "B", 1), (HEAVY, "A", 10))
    served = serve(queue, loaded="A")
    assert served.index((LIGHT, "B")) <= 1
    # Two members on two models, both backlogged: each is served about equally, not one drained first.
    queue = queue_with((HEAVY, "A", 6), (OTHER, "B", 6))
    served = serve(queue, loaded="A")
    first_half = [flow for flow, _ in served[:6]]
    assert 2 <= first_half.count(OTHER) <= 4
    switches = sum(1 for before, after in zip(served, served[1:]) if before[1] != after[1])
    assert switches <= 6  # without the preference: every batch alternates (11 switches)

