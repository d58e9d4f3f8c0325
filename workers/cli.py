"""``unclip worker``: registered on the ``unclip`` parser by ``cli/main.py``. The worker itself
(``workers.main``, which loads torch and the model) is imported only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``worker`` to an argparse subparsers object."""
    worker = subparsers.add_parser(
        "worker", help="run a GPU worker: loads the model once, samples in batches"
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty (tests)")
    worker.add_argument("--name", default=None, help="worker name (default: random)")
    worker.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from workers.main import run

    return int(run(burst=args.burst, name=args.name))
