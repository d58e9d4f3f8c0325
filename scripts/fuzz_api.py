"""Schemathesis against the API's OpenAPI schema, every operation (loopback only).

    python scripts/fuzz_api.py                 # >= 1,000 generated cases (a few minutes)
    python scripts/fuzz_api.py --max-examples 20

Starts the API (uvicorn, this repository's app) on a free port over the Redis of
UNCLIP_REDIS_URL with a private queue and a fresh API key of high limits, runs `schemathesis run`
with the checks not_a_server_error and response_schema_conformance (no 5xx; every answer
matches the schema), prints schemathesis' summary and exits with its code. No worker runs: jobs
stay queued (up to the queue limit, then 429s, which the schema documents); /readyz is left out
(its 503 without workers is the designed answer), and so are the /v1/images routes, which wait
for their job (a 504 without workers), and a job's event stream (it ends with the job).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from redis import Redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contract.api_keys import ApiKeyStore  # noqa: E402
from contract.keys import Keys  # noqa: E402
from contract.settings import Settings  # noqa: E402
from service.main import create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=150, help="per operation (7 operations)")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    redis_url = os.environ.get("UNCLIP_REDIS_URL", "redis://127.0.0.1:6379/9")
    settings = Settings(redis_url=redis_url, queue=f"fuzz-{uuid.uuid4().hex[:10]}", max_queue_depth=50)
    token, _ = ApiKeyStore(Redis.from_url(redis_url), Keys(settings.key_prefix)).create(
        "fuzz", requests_per_minute=1_000_000, images_per_minute=1_000_000, max_active_jobs=100_000
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            # /readyz answers 503 by design while no worker runs (tests/service cover it).
            "--exclude-path",
            "/readyz",
            # The OpenAI-compatible image routes wait for their job: without a worker, a valid
            # request ends in the designed 504; a job's event stream lasts until the job ends,
            # which without a worker it never does (tests/service/test_openai_api.py and
            # test_events.py cover them).
            "--exclude-path-regex",
            "^/v1/images/|/events$",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--generation-deterministic",
            "--suppress-health-check",
            "all",
            "--no-color",
        ]
        return subprocess.run(command, cwd=REPO, check=False).returncode
    finally:
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    sys.exit(main())
