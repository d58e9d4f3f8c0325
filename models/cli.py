"""The ``unclip`` command: one argparse parser, each subcommand registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add subcommands through ``register(subparsers)``. Imported lazily by name so the
# model package does not import the web service at import time.
SUBCOMMAND_MODULES = (
    "models.generate_cli",  # generate
    "models.training.cli",  # train
    "models.evaluation.cli",  # evaluate
    "service.cli",  # api, worker, serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unclip", description="unCLIP (DALL-E 2) text-to-image: models and service"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
