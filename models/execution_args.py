"""Command-line choice of the fast path's precision, shared by ``generate`` and ``evaluate``.

The worker reads the same switch from ``UNCLIP_AUTOCAST_STAGES``; on the command line it is what
lets ``unclip evaluate`` score one model under two precisions (the "before and after" that a
change of default needs, docs/benchmark.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, cast

from models.configs import CPU_AUTOCAST_STAGES, DEFAULT_AUTOCAST_STAGES, UNET_STAGES, StageName

if TYPE_CHECKING:  # models.execution imports torch, which `unclip generate --help` must not load
    from models.execution import ExecutionConfig


def parse_autocast_stages(text: str) -> tuple[StageName, ...]:
    """``"decoder,sr256"`` → ``("decoder", "sr256")``; ``"none"`` → ``()``. Unknown names are an error."""
    if text.strip().lower() == "none":
        return ()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in UNET_STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected 'none' or a comma-separated list of {', '.join(UNET_STAGES)}; got {text!r}"
        )
    return tuple(cast(StageName, name) for name in dict.fromkeys(names))


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """``--autocast-stages``: which UNets run in bfloat16 where the device computes it natively."""
    parser.add_argument(
        "--autocast-stages",
        type=parse_autocast_stages,
        metavar="STAGES",
        help=f"UNets run under bfloat16 autocast where the CPU or GPU has native bf16 "
        f"('none', or a comma-separated list of {', '.join(UNET_STAGES)}; default: "
        f"{','.join(CPU_AUTOCAST_STAGES)} on a CPU, {','.join(DEFAULT_AUTOCAST_STAGES)} on a GPU)",
    )


def execution_from_args(args: argparse.Namespace) -> ExecutionConfig:
    """The default fast path with the command line's precision, if it named one."""
    from models.execution import ExecutionConfig

    stages: tuple[StageName, ...] | None = getattr(args, "autocast_stages", None)
    if stages is None:
        return ExecutionConfig()
    return dataclasses.replace(ExecutionConfig(), autocast_stages=stages)
