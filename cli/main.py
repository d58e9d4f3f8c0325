"""The ``unclip`` command: one argparse parser whose subcommands live in the layer that owns them.

Only the module of the subcommand being run is imported (pip's and rq's CLIs load commands
lazily the same way): ``unclip api`` never imports torch or the model code, and ``--help`` or an
argument error answers at once. The other subcommands appear in the parser by name and help only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Subcommand(NamedTuple):
    module: str  # has ``register(subparsers)``, which adds this subcommand (and maybe siblings)
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "api": Subcommand("service.cli", "run the HTTP API (FastAPI under uvicorn)"),
    "serve": Subcommand("service.cli", "API plus one worker on this machine (bundled default model)"),
    "worker": Subcommand("workers.cli", "run a GPU worker: loads the model once, samples in batches"),
    "keys": Subcommand("service.keys_cli", "create, list and revoke API keys"),
    "generate": Subcommand("models.generate_cli", "generate images for one prompt or a file of prompts"),
    "train": Subcommand("models.training.cli", "train a stage (or all stages) of the model"),
    "assemble": Subcommand(
        "models.training.cli", "combine stages trained in separate directories into one model directory"
    ),
    "variations": Subcommand("models.image_ops_cli", "variations of an image (paper section 3.1)"),
    "interpolate": Subcommand("models.image_ops_cli", "frames between two images or prompts (3.2)"),
    "text-diff": Subcommand("models.image_ops_cli", "move an image along a caption difference (3.3)"),
    "edit": Subcommand("models.image_ops_cli", "repaint the masked part of an image from a prompt"),
    "evaluate": Subcommand(
        "models.evaluation.cli",
        "prompt adherence, shape fidelity, CLIP R-precision and CLIP-FID on the held-out prompts",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with ``command``'s module imported and registered; every other subcommand is a
    name and a help line (they cannot be parsed until chosen, which is all a parse needs)."""
    parser = argparse.ArgumentParser(
        prog="unclip", description="unCLIP (DALL-E 2) text-to-image: models and service"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = SUBCOMMANDS.get(command or "")
    if chosen is not None:
        importlib.import_module(chosen.module).register(subparsers)
    for name, subcommand in SUBCOMMANDS.items():
        if chosen is None or subcommand.module != chosen.module:
            subparsers.add_parser(name, help=subcommand.help, add_help=False)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The first argument that names a subcommand (the root parser has no options of its own)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
