#!/usr/bin/env python3
"""Container health probe for the unCLIP image (standard library only: the image has no curl).

    unclip-healthcheck api [PORT]      GET http://127.0.0.1:PORT/healthz answers 200 (PORT: 8000)
    unclip-healthcheck worker [PORT]   GET http://127.0.0.1:PORT/metrics answers 200 and reports
                                       ``unclip_worker_up 1`` (PORT: $UNCLIP_WORKER_METRICS_PORT or 9101)

Exit 0 when healthy, 1 otherwise (Docker's HEALTHCHECK contract), with one line saying why.
A worker reports ``unclip_worker_up 0`` while it loads the model, so give it a ``start_period``
longer than the model load.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0
DEFAULT_API_PORT = 8000
DEFAULT_WORKER_PORT = 9101


def fetch(url: str) -> tuple[int, str]:
    """Status code and body of a GET (HTTP errors are returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def worker_up(exposition: str) -> bool:
    """True when the Prometheus text exposition has an ``unclip_worker_up`` sample equal to 1."""
    for line in exposition.splitlines():
        if not line.startswith("unclip_worker_up"):
            continue
        name_and_labels, _, rest = line.partition(" ")
        if name_and_labels.split("{", 1)[0] != "unclip_worker_up":
            continue
        try:
            return float(rest.split()[0]) == 1.0
        except (IndexError, ValueError):
            return False
    return False


def check(role: str, port: int) -> str | None:
    """None when healthy, else the reason."""
    if role == "api":
        status, _ = fetch(f"http://127.0.0.1:{port}/healthz")
        return None if status == 200 else f"/healthz answered {status}"
    status, body = fetch(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return f"/metrics answered {status}"
    return None if worker_up(body) else "unclip_worker_up is not 1 (model not loaded or worker defunct)"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("api", "worker"):
        print("usage: unclip-healthcheck api|worker [PORT]", file=sys.stderr)
        return 2
    role = argv[0]
    default = (
        DEFAULT_API_PORT
        if role == "api"
        else int(os.environ.get("UNCLIP_WORKER_METRICS_PORT") or DEFAULT_WORKER_PORT)
    )
    port = int(argv[1]) if len(argv) == 2 else default
    try:
        problem = check(role, port)
    except (OSError, ValueError) as exc:  # refused, timed out, DNS, malformed URL
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        print(f"{role} healthy")
        return 0
    print(f"{role} unhealthy: {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
