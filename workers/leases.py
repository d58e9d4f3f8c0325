"""Worker liveness: a short lease per worker, job ownership, and the reaper that requeues the
jobs of a dead worker within seconds (rq alone notices only at its 10-minute maintenance pass).

- Every worker keeps ``unclip:<queue>:lease:<name>`` alive (TTL ``lease_ttl_s``, renewed every
  third of it by a thread that does nothing else) and lists its name in ``...:workers``.
- Every job a worker takes is in its ``...:owned:<name>`` set from the moment it is claimed
  (an atomic Lua move out of the queue) until its final state is recorded.
- Every worker (and ``unclip worker`` at start-up) runs :meth:`Reaper.run_once` every half lease,
  and so does the API (``contract.reaper``): a listed worker without a lease is dead. Its jobs
  still unfinished are put back at the front of the queue, at most ``max_worker_lost_retries``
  times each, then failed with ``worker_lost``.
- A worker that finds a job it runs no longer in its owned set (it was reaped while stalled)
  drops the job rather than record a second outcome: the owned set is the fence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from redis import Redis
from rq.queue import Queue

from contract.keys import Keys
from contract.reaper import PeriodicThread as PeriodicThread
from contract.reaper import Reaper as Reaper

log = logging.getLogger("unclip.worker")

# Move one job out of the queue into the intermediate list and this worker's owned set, or do
# nothing when another worker (or a cancel) removed it first.
_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  return 1
end
return 0
"""


class Ownership:
    """The set of jobs this worker is responsible for."""

    def __init__(self, connection: Redis, keys: Keys, queue: Queue, worker_name: str):
        self.connection = connection
        self.queue = queue
        self.key = keys.owned(worker_name)
        self._claim = connection.register_script(_CLAIM)
        self._surrendered = False

    def adopt(self, job_id: str) -> None:
        """Record a job rq's own dequeue moved to the intermediate list."""
        self.connection.sadd(self.key, job_id)

    def claim(self, job_id: str) -> bool:
        keys = [self.queue.key, self.queue.intermediate_queue_key, self.key]
        return bool(self._claim(keys=keys, args=[job_id]))

    def surrender(self) -> None:
        """Give up every job from now on (the shutdown grace ran out): the batch sees its jobs as
        no longer this worker's, stops at its next step and records nothing; the worker hands
        them back to the queue as it exits."""
        self._surrendered = True

    def holds(self, job_ids: Sequence[str]) -> list[bool]:
        if not job_ids:
            return []
        if self._surrendered:
            return [False] * len(job_ids)
        return [bool(x) for x in self.connection.smismember(self.key, list(job_ids))]

    def release(self, job_id: str) -> None:
        self.connection.srem(self.key, job_id)
        self.connection.lrem(self.queue.intermediate_queue_key, 1, job_id)


class Lease:
    """This worker's liveness key."""

    def __init__(self, connection: Redis, keys: Keys, worker_name: str, ttl_s: int):
        self.connection = connection
        self.keys = keys
        self.name = worker_name
        self.ttl_s = ttl_s

    def renew(self) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.lease(self.name), int(time.time()), ex=self.ttl_s)
            pipe.sadd(self.keys.leases, self.name)
            pipe.execute()

    def release(self) -> None:
        """Clean exit: give back anything still owned (none after a warm stop) and drop the lease."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.lease(self.name))
            pipe.srem(self.keys.leases, self.name)
            pipe.execute()
