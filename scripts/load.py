"""Load test: N jobs from C concurrent clients against a running API (loopback only).

    python scripts/load.py --url http://127.0.0.1:8000 --key uk_... --jobs 64 --clients 8
    python scripts/load.py ... --burst 150      # 150 submits at once (over the queue limit)

Each client submits 64x64 jobs one after another and polls each to its final state (a 429 is
counted and retried after its Retry-After). Every submit carries its own Idempotency-Key, so a
submit whose answer was lost to a transport error (a reset connection, a timeout) is retried
without making a second job; transport errors are counted, never fatal. Prints one JSON line:
accepted, 429s, succeeded, failed, lost (accepted but not final at the end: must be 0), 5xx
(must be 0), transport errors, p50/p99 of queue wait (started - created) and end to end
(finished - created), images/s, mean batch size. Bounded: at most --jobs submits and --deadline
seconds; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "canceled"}
POLL_S = 0.25


@dataclass
class Tally:
    accepted: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)  # by exception type
    unanswered: int = 0  # submits that never got an answer before the deadline
    records: list[dict[str, Any]] = field(default_factory=list)
    lost: int = 0


async def request(
    client: httpx.AsyncClient, tally: Tally, deadline: float, method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    """One request, retried (counted) on transport errors until the deadline; None past it.
    Only idempotent requests come here: GETs, and submits with an Idempotency-Key."""
    while time.monotonic() < deadline:
        try:
            return await client.request(method, url, **kwargs)
        except httpx.TransportError as error:
            tally.transport_errors[type(error).__name__] += 1
            await asyncio.sleep(POLL_S)
    return None


async def one_job(
    client: httpx.AsyncClient, tally: Tally, i: int, deadline: float, retry: bool, run: str
) -> None:
    body = {"prompt": f"a large red circle in the center, load {i}", "size": "64x64", "seed": i}
    headers = {"Idempotency-Key": f"load-{run}-{i}"}
    while True:
        response = await request(client, tally, deadline, "POST", "/generate", json=body, headers=headers)
        if response is None:
            tally.unanswered += 1
            return
        if response.status_code >= 500:
            tally.server_errors += 1
            return
        if response.status_code == 429:
            tally.rate_limited += 1
            if not retry or time.monotonic() > deadline:
                return
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        response.raise_for_status()
        break
    tally.accepted += 1
    job_id = response.json()["id"]
    while True:
        record = await request(client, tally, deadline, "GET", f"/jobs/{job_id}")
        if record is None:
            break
        if record.status_code >= 500:
            tally.server_errors += 1
        elif record.status_code == 429:  # the key's request rate: wait as told
            tally.rate_limited += 1
            await asyncio.sleep(float(record.headers.get("retry-after", "1")))
            continue
        elif record.raise_for_status().json()["status"] in FINAL:
            tally.records.append(record.json())
            return
        await asyncio.sleep(POLL_S)
    tally.lost += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    tally = Tally()
    deadline = time.monotonic() + args.deadline
    started = time.monotonic()
    limits = httpx.Limits(max_connections=max(args.clients, args.burst or 0) + 4)
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=30, limits=limits) as client:
        if args.burst:
            await asyncio.gather(
                *(one_job(client, tally, i, deadline, False, run) for i in range(args.burst))
            )
        else:
            queue = iter(range(args.jobs))

            async def worker() -> None:
                for i in queue:
                    await one_job(client, tally, i, deadline, True, run)

            await asyncio.gather(*(worker() for _ in range(args.clients)))
    elapsed = time.monotonic() - started
    return summary(tally, elapsed, args)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def summary(tally: Tally, elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    done = [r for r in tally.records if r["status"] == "succeeded"]
    waits = [r["started_at"] - r["created_at"] for r in done if r.get("started_at")]
    ends = [r["finished_at"] - r["created_at"] for r in done if r.get("finished_at")]
    images = sum(len(r["images"]) for r in done)
    return {
        "clients": args.clients if not args.burst else args.burst,
        "mode": "burst" if args.burst else "steady",
        "accepted": tally.accepted,
        "429": tally.rate_limited,
        "succeeded": len(done),
        "failed": sum(1 for r in tally.records if r["status"] != "succeeded"),
        "lost": tally.lost,
        "5xx": tally.server_errors,
        "transport_errors": sum(tally.transport_errors.values()),
        "transport_error_types": dict(tally.transport_errors),
        "unanswered": tally.unanswered,
        "queue_wait_p50_s": pct(waits, 0.5),
        "queue_wait_p99_s": pct(waits, 0.99),
        "end_to_end_p50_s": pct(ends, 0.5),
        "end_to_end_p99_s": pct(ends, 0.99),
        "images_per_s": round(images / elapsed, 3) if elapsed else None,
        "mean_batch_size": round(statistics.mean(r["batch_size"] for r in done if r.get("batch_size")), 2)
        if done
        else None,
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", default=None, help="API key (omit when the API runs without keys)")
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--burst", type=int, default=0, help="submit this many at once instead")
    parser.add_argument("--deadline", type=float, default=900.0, help="stop polling after this long")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("loopback addresses only")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
