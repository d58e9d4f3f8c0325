"""A worker rides out a Redis restart: it never exits because Redis is briefly away.

rq's work loop retries its blocking dequeue while Redis is unreachable, but a connection error
anywhere else (the suspension check, a heartbeat, the batch's own writes, the teardown) makes it
log "found an unhandled exception, quitting" and return. :func:`work_through_outages` runs the
loop again instead: it waits until Redis answers, hands back whatever this worker still owned
(its batch may have been cut off mid-way: the jobs go back to the queue, no attempt counted),
re-registers with rq and works on. It returns only on a stop signal, at the end of a burst, or
when the model runtime is defunct.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError
from rq.exceptions import StopRequested

from contract.reaper import Reaper
from workers.runtime import RuntimeState
from workers.worker import BatchingWorker

log = logging.getLogger("unclip.worker")
_MAX_WAIT_S = 10.0


def work_through_outages(worker: BatchingWorker, burst: bool, logging_level: str) -> None:
    while True:
        try:
            worker.work(burst=burst, logging_level=logging_level)
        except RedisError as exc:  # rq's teardown, with Redis still away
            log.warning("worker loop ended while Redis is unreachable: %s", exc)
        if burst or worker.stop_signal_received or worker.runtime.state is RuntimeState.DEFUNCT:
            return
        log.warning("the rq loop stopped without a stop signal; rejoining once Redis answers")
        if not _wait_for_redis(worker):
            return
        _rejoin(worker)


def _wait_for_redis(worker: BatchingWorker) -> bool:
    """Until Redis answers (True), or a stop signal arrives meanwhile (False)."""
    delay = 0.5
    while not worker.stop_signal_received:
        try:
            worker.connection.ping()
            return True
        except RedisError as exc:
            log.warning("Redis unreachable (%s); retrying in %.1fs", exc, delay)
        except StopRequested:  # rq's signal handler, when idle
            return False
        time.sleep(delay)
        delay = min(delay * 2, _MAX_WAIT_S)
    return False


def _rejoin(worker: BatchingWorker) -> None:
    """Forget the broken registration and give back this worker's unfinished jobs."""
    try:
        worker.unsubscribe()  # type: ignore[no-untyped-call]
    except Exception as exc:
        log.debug("rejoin: unsubscribe failed: %s", exc)
    try:
        worker.register_death()  # type: ignore[no-untyped-call]
    except RedisError as exc:
        log.debug("rejoin: register_death failed: %s", exc)
    worker._stop_requested = False  # rq's flag, set by a DEFUNCT runtime only (checked above)
    Reaper(worker.store).reap(worker.name, count_attempt=False)
