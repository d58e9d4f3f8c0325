"""Which queued jobs are sampled together: pure logic, no Redis, no clock of its own.

Jobs are compatible when they have the same output size and the same sampling settings (steps,
guidance, sampler, eta of every stage): then one batched ``generate`` call serves them all, and
since each request's seed fixes its images, batching never changes a result. A batch starts with
the job rq dequeued, takes compatible waiting jobs in queue order while their images fit in
``max_images``, and stops growing when full or when ``max_wait_s`` has passed since it started.

A job that finds no compatible company in the queue starts at once (unless ``wait_alone``): the
window only pays when jobs arrive together, and at low load waiting would add ``max_wait_s`` to
every job for nothing. Under load the queue fills while a batch samples, so the next batch finds
its company already waiting and then waits the window for more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from models.configs import SamplingConfig


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for two jobs to share a batch."""

    size: int
    sampling: SamplingConfig
    kind: str = "generate"  # a batch holds one job kind (text, variations, edits, ...)


@dataclass(frozen=True)
class Candidate:
    """A queued job as the batcher sees it."""

    job_id: str
    key: BatchKey
    images: int  # the request's n: rows it adds to the batch


@dataclass(frozen=True)
class BatchLimits:
    max_images: int  # rows per batch; a single larger job still runs, alone
    max_wait_s: float  # how long a batch may wait for company after its first job
    wait_alone: bool = False  # a batch of one waits the window too (off: it starts at once)

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ValueError("max_images must be >= 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")


@dataclass
class Batch:
    """A batch being filled, seeded by its first job at time ``started_at``."""

    first: Candidate
    limits: BatchLimits
    started_at: float
    members: list[Candidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.members = [self.first]

    @property
    def key(self) -> BatchKey:
        return self.first.key

    @property
    def images(self) -> int:
        return sum(c.images for c in self.members)

    @property
    def job_ids(self) -> list[str]:
        return [c.job_id for c in self.members]

    def is_full(self) -> bool:
        return self.images >= self.limits.max_images

    def fits(self, candidate: Candidate) -> bool:
        return (
            candidate.key == self.key
            and candidate.job_id not in self.job_ids
            and self.images + candidate.images <= self.limits.max_images
        )

    def choose(self, waiting: Iterable[Candidate]) -> list[Candidate]:
        """The waiting candidates (in queue order) that would fit, as if each chosen one were added."""
        chosen: list[Candidate] = []
        room = self.limits.max_images - self.images
        taken = set(self.job_ids)
        for candidate in waiting:
            if candidate.key == self.key and candidate.job_id not in taken and candidate.images <= room:
                chosen.append(candidate)
                taken.add(candidate.job_id)
                room -= candidate.images
        return chosen

    def add(self, candidate: Candidate) -> None:
        if not self.fits(candidate):
            raise ValueError(f"job {candidate.job_id} does not fit this batch")
        self.members.append(candidate)

    def time_left(self, now: float) -> float:
        return max(0.0, self.started_at + self.limits.max_wait_s - now)

    def should_wait(self, now: float) -> bool:
        """Keep looking for company: not full, the wait window still open, and either company has
        already come (jobs are arriving together) or a lone job is configured to wait."""
        if self.is_full() or self.time_left(now) <= 0:
            return False
        return len(self.members) > 1 or self.limits.wait_alone


def plan_batches(candidates: Sequence[Candidate], limits: BatchLimits) -> list[list[Candidate]]:
    """How a worker that finds ``candidates`` already queued would batch them (no waiting):
    each batch starts at the oldest job not yet taken and takes what fits, in queue order."""
    remaining = list(candidates)
    batches: list[list[Candidate]] = []
    while remaining:
        batch = Batch(remaining[0], limits, started_at=0.0)
        for candidate in batch.choose(remaining[1:]):
            batch.add(candidate)
        taken = set(batch.job_ids)
        remaining = [c for c in remaining if c.job_id not in taken]
        batches.append(batch.members)
    return batches
