"""Admission: a job joins the queue only if the queue and its API key have room, checked and
enqueued in one Lua script, so no burst of concurrent submits can slip past a limit.

The job's record (rq's hash, status ``queued``) is saved first with a short expiry, then
:data:`_ADMIT` runs atomically in Redis:

1. the queue holds fewer than ``max_queue_depth`` jobs, else ``queue_full``;
2. for a job with an API key: the key has fewer than its ``max_active_jobs`` unfinished jobs
   (the ``...:active:<key>`` set; members whose record is gone are pruned), else
   ``too_many_active_jobs``; and its images in the last minute (``...:imgrate:<key>``, a sorted
   set of ``<job id>:<images>`` by time) plus this job's stay within ``images_per_minute``, else
   ``image_rate_limited`` with the wait until enough of them leave the window;
3. then the job id is pushed on the queue, added to the key's active set and image window, and
   its record made permanent. A refused job's record is deleted, so nothing of it remains.

``JobStore.record_final`` takes the job out of its key's active set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis import Redis

_ADMIT = """
local queue, active, window, record, queues = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, max_depth, keyed = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local depth = redis.call('LLEN', queue)
if depth >= max_depth then
  redis.call('DEL', record)
  return {'queue_full', depth}
end
if keyed then
  local max_active, per_minute, images = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local now_ms, window_ms, job_prefix = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
  for _, id in ipairs(redis.call('SMEMBERS', active)) do
    if redis.call('EXISTS', job_prefix .. id) == 0 then redis.call('SREM', active, id) end
  end
  local running = redis.call('SCARD', active)
  if running >= max_active then
    redis.call('DEL', record)
    return {'too_many_active_jobs', running}
  end
  redis.call('ZREMRANGEBYSCORE', window, '-inf', now_ms - window_ms)
  local used = 0
  local entries = redis.call('ZRANGE', window, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    used = used + tonumber(string.match(entries[i], ':(%d+)$'))
  end
  if used + images > per_minute then
    -- wait until the oldest entries that must leave have left the window
    local freed, wait_ms = used + images - per_minute, window_ms
    for i = 1, #entries, 2 do
      freed = freed - tonumber(string.match(entries[i], ':(%d+)$'))
      if freed <= 0 then
        wait_ms = tonumber(entries[i + 1]) + window_ms - now_ms
        break
      end
    end
    redis.call('DEL', record)
    return {'image_rate_limited', wait_ms}
  end
  redis.call('ZADD', window, now_ms, job_id .. ':' .. images)
  redis.call('PEXPIRE', window, window_ms)
  redis.call('SADD', active, job_id)
end
redis.call('PERSIST', record)
redis.call('SADD', queues, queue)
redis.call('RPUSH', queue, job_id)
return {'admitted', depth + 1}
"""

WINDOW_S = 60  # images per minute


@dataclass(frozen=True)
class KeyLimits:
    """What one API key may have: images per minute, unfinished jobs at once."""

    images_per_minute: int
    max_active_jobs: int


class Refused(Exception):
    """The queue or the key had no room: ``code`` (queue_full, too_many_active_jobs,
    image_rate_limited), the count that was over, and how long to wait (None: the server's
    ``retry_after_s``)."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Slot:
    """Where a job is admitted: its queue and, for a keyed job, the key's sets."""

    queue_key: str
    queues_key: str
    record_key: str
    job_prefix: str
    active_key: str | None = None
    window_key: str | None = None


class Admission:
    """Runs :data:`_ADMIT` for one job."""

    def __init__(self, connection: Redis):
        self._admit = connection.register_script(_ADMIT)

    def admit(self, slot: Slot, job_id: str, max_depth: int, images: int, limits: KeyLimits | None) -> int:
        """Push ``job_id`` if there is room and return the queue's new length; else raise
        :class:`Refused` (the job's saved record is deleted)."""
        keyed = limits is not None and slot.active_key is not None and slot.window_key is not None
        keys = [
            slot.queue_key,
            slot.active_key or "",
            slot.window_key or "",
            slot.record_key,
            slot.queues_key,
        ]
        args: list[str | int] = [job_id, max_depth, "1" if keyed else "0"]
        if limits is not None:
            now_ms = int(time.time() * 1000)
            args += [limits.max_active_jobs, limits.images_per_minute, images, now_ms, WINDOW_S * 1000]
            args.append(slot.job_prefix)
        outcome, value = self._admit(keys=keys, args=args)
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome == "admitted":
            return int(value)
        raise _refusal(outcome, int(value), max_depth, images, limits)


def _refusal(code: str, value: int, max_depth: int, images: int, limits: KeyLimits | None) -> Refused:
    if code == "queue_full":
        return Refused(code, f"{value} jobs are waiting (limit {max_depth}); retry later")
    assert limits is not None
    if code == "too_many_active_jobs":
        return Refused(
            code,
            f"this key has {value} jobs queued or running (limit {limits.max_active_jobs}); "
            "wait for one to finish",
        )
    if images > limits.images_per_minute:
        return Refused(
            code, f"the job makes {images} images; this key may make {limits.images_per_minute} a minute"
        )
    return Refused(
        code,
        f"this key may make {limits.images_per_minute} images a minute; retry after the reset",
        retry_after_s=max(1, math.ceil(value / 1000)),
    )
