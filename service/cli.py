"""``unclip api`` and ``unclip serve``: registered on the ``unclip`` parser by ``cli/main.py``
through :func:`register`; ``python -m service.cli`` runs them without it. Nothing here imports
torch or the model code (``serve`` starts its worker as a separate process).

Settings come from the environment (``UNCLIP_*``, see ``service/settings.py``); flags cover only
what differs per process (address, worker count, burst mode).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from contract.connection import REDIS_HINT, check_redis


def register(subparsers: Any) -> None:
    """Add ``api`` and ``serve`` to an argparse subparsers object."""
    api = subparsers.add_parser("api", help="run the HTTP API (FastAPI under uvicorn)")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(func=run_api)

    serve = subparsers.add_parser(
        "serve",
        help="API plus one worker on this machine (bundled default model); for local development: "
        "no API keys unless UNCLIP_REQUIRE_API_KEYS=true",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=run_serve)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from contract.settings import get_settings

    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes answer /metrics: they must share their metric values through files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="unclip-prometheus-")
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout_keep_alive=get_settings().http_keep_alive_s,
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from contract.settings import get_settings
    from service.main import create_app

    # `serve` is the local development command (`make run`): without keys unless the environment
    # asks for them. The API logs a warning at start-up while keys are off.
    os.environ.setdefault("UNCLIP_REQUIRE_API_KEYS", "false")
    settings = get_settings()
    problem = check_redis(settings.redis_url)
    if problem is not None:
        print(
            f"error: no Redis answers at {settings.redis_url} ({problem});\n       {REDIS_HINT}",
            file=sys.stderr,
        )
        return 2
    worker = subprocess.Popen([sys.executable, "-m", "workers.main"])
    url = f"http://{args.host}:{args.port}"
    print(_banner(url), flush=True)
    # uvicorn re-raises the SIGTERM/SIGINT it caught once it has shut down; with the default
    # disposition that would kill this process before it stops the worker.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    threading.Thread(target=_watch, args=(worker,), daemon=True).start()
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            timeout_keep_alive=settings.http_keep_alive_s,
        )
    except KeyboardInterrupt:
        pass
    finally:
        _stop(worker)
    return 0 if worker.returncode in (0, -signal.SIGTERM) else 1


def _watch(worker: subprocess.Popen[bytes]) -> None:
    """A worker that dies on its own (no model weights, say) takes the API down with it:
    serving requests nobody will ever run would only hide the problem."""
    code = worker.wait()
    print(f"error: the worker exited with code {code} (its log is above); stopping the API", file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)


def _banner(url: str) -> str:
    return (
        f"unCLIP service on {url}  (API docs: {url}/docs; the worker is loading the model)\n"
        f"try:\n"
        f"  curl -s -X POST {url}/generate -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"prompt": "a large red circle in the center on a white background", "n": 1, "size": "256x256"}}\'\n'
        f"  curl -s {url}/jobs/<id>            # poll until status is succeeded\n"
        f"  curl -s -o circle.png {url}/jobs/<id>/images/0.png"
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM: finish the batch), then a kill if it does not exit in time."""
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
