"""``unclip train``: train one stage, or the whole chain, into a model directory.

    unclip train --stage clip|prior|decoder|sr256|sr1024 [--config tiny] [--steps N | --minutes M]
                 [--batch-size B] [--lr LR] [--device cpu|cuda] [--seed S] [--data-dir DIR] --out DIR
                 [--threads T] [--replicas N]
    unclip train --all [--minutes TOTAL | --steps N] ... --out DIR

Restarting the same command resumes from ``<out>/checkpoints/<stage>.pt``. With ``--all``,
``--minutes`` is the total budget, split across the stages by the recipe (``STAGE_SHARE``), and
``--steps`` applies to every stage. Also runnable as ``python -m models.training.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from models.configs import STAGES, StageName, get_config
from models.training.config import DEFAULT_TOTAL_MINUTES, TrainConfig, get_train_config, stage_minutes


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a stage (or all stages) of the model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    assemble = subparsers.add_parser(
        "assemble",
        help="combine stages trained in separate directories into one model directory",
        description="Copy the stages of several model directories (later ones win) into --out, "
        "checking that each fits the config. Lets independent stages train side by side.",
    )
    assemble.add_argument("sources", nargs="+", help="model directories to take stages from")
    assemble.add_argument("--config", default="tiny", help="model preset (default: tiny)")
    assemble.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages")
    assemble.add_argument(
        "--checkpoints",
        nargs="+",
        choices=STAGES,
        default=(),
        metavar="STAGE",
        help="take these stages' EMA weights from the sources' checkpoints/<stage>.pt (a snapshot of "
        "a run still training; the run goes on undisturbed) instead of their exported weights",
    )
    assemble.add_argument("--out", required=True, help="the model directory to write")
    assemble.set_defaults(func=run_assemble)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", choices=STAGES, help="the stage to train")
    which.add_argument(
        "--all", action="store_true", help="train clip, prior, decoder, sr256, sr1024 in order"
    )
    parser.add_argument("--config", default="tiny", help="model preset (default: tiny)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimizer steps (per stage with --all)")
    budget.add_argument(
        "--minutes",
        type=float,
        help=f"training minutes (total with --all; default {DEFAULT_TOTAL_MINUTES:g})",
    )
    parser.add_argument("--batch-size", type=int, help="examples per step (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights, data order and noise (default: 0)"
    )
    parser.add_argument(
        "--data-dir", help="train on a folder of image + caption pairs instead of the shapes world"
    )
    parser.add_argument("--out", required=True, help="model directory (weights, checkpoints/, logs/)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's). On a CPU shared with other jobs, 1 is often "
        "several times faster than 2 for these small networks (see models/training/RECIPE.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument(
        "--init-from",
        metavar="WEIGHTS_DIR",
        help="fine-tune: start --stage from this weights directory's weights for it (e.g. "
        "models/default_weights with --data-dir); tensors it lacks keep their fresh "
        "initialisation; a checkpoint in --out still resumes instead",
    )
    parser.add_argument(
        "--crop-fraction",
        type=float,
        help="upsamplers: train on crops of this fraction of the target side instead of the "
        "config's (1 = whole images; the bundled sr256 ends with whole images so that its "
        "normalization statistics match sampling, see models/training/RECIPE.md)",
    )
    parser.add_argument(
        "--high-noise-fraction",
        type=float,
        help="diffusion stages: the fraction of examples whose timestep is drawn from the noisiest "
        "tenth of the schedule, where sampling starts and only the conditions say where the object "
        "goes (default: the recipe's)",
    )
    parser.add_argument(
        "--swap-twins",
        type=float,
        help="clip on the shapes world: this fraction of each batch becomes pairs of pictures that "
        "differ in one attribute only (--swap-attributes), captioned in full: hard negatives for an "
        "attribute in-batch retrieval lets a CLIP ignore (default: 0)",
    )
    parser.add_argument(
        "--swap-attributes",
        nargs="+",
        choices=["position", "shape", "color", "size", "background"],
        help="the attributes --swap-twins changes, one drawn per pair (default: position)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="train data-parallel in this many processes that average their gradients every step, "
        "each with --threads threads (default 1) and its own batch of --batch-size, so a step sees "
        "N times the examples. CPU only: two one-thread replicas use both cores without OpenMP "
        "barriers between them (models/training/RECIPE.md, section 8, has the measured rates)",
    )
    parser.add_argument(
        "--edge-loss",
        type=float,
        metavar="STRENGTH",
        help="decoder and upsamplers: weigh each pixel's squared error by 1 + STRENGTH x the clean image's "
        "normalised gradient magnitude, so that outlines count (default 0: the plain mean; "
        "models/training/RECIPE.md, section 10)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="train under bfloat16 autocast (float32 weights, optimizer and EMA): 2.1x the decoder's "
        "examples/s as two replicas on a Xeon with AMX (models/training/RECIPE.md, section 10); on a CPU "
        "without bf16 instructions it can be slower",
    )
    parser.add_argument(
        "--shape-weights",
        nargs="+",
        metavar="SHAPE=WEIGHT",
        help="the shapes world: relative frequencies of the shapes in training examples, e.g. "
        "circle=1 square=2 triangle=3 star=4 (unnamed shapes: 0; default: uniform), to show a model "
        "more of the shapes it draws worst. Measured on the decoder: nothing in 25K examples under the "
        "plain loss, and star=2 under --edge-loss 9 cost 36 points of shape (models/training/RECIPE.md, "
        "sections 10 and 11); the held batch and the evaluation set stay uniform",
    )
    parser.add_argument(
        "--text-drop",
        type=float,
        help="decoder: probability of dropping the caption (default: the config's: 0.2 for tiny, "
        "the paper's 0.5 for paper). The CLIP embedding is still dropped 10%% of the time independently, and both "
        "together are the unconditional half of classifier-free guidance",
    )


IMAGE_DIFFUSION_STAGES = ("decoder", "sr256", "sr1024")  # the stages --edge-loss applies to


def _parse_shape_weights(items: list[str] | None) -> tuple[tuple[str, float], ...] | None:
    """``["star=4", "circle=1"]`` → ``(("star", 4.0), ("circle", 1.0))``, checked; None when not given."""
    from models.data.shapes import shape_probabilities

    if not items:
        return None
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            raise SystemExit(f"unclip train: --shape-weights wants SHAPE=WEIGHT, not {item!r}") from None
        if not sep:
            raise SystemExit(f"unclip train: --shape-weights wants SHAPE=WEIGHT, not {item!r}")
    try:
        shape_probabilities(dict(pairs))
    except ValueError as error:
        raise SystemExit(f"unclip train: --shape-weights: {error}") from None
    return tuple(pairs)


def train_configs(
    args: argparse.Namespace, stages: list[StageName], shape_weights: tuple[tuple[str, float], ...] | None
) -> dict[StageName, TrainConfig]:
    """Each stage's recipe with the command line's overrides."""
    minutes = _minutes_per_stage(args, stages)
    return {
        stage: get_train_config(
            args.config,
            stage,
            steps=args.steps,
            minutes=minutes[stage],
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            high_noise_fraction=args.high_noise_fraction,
            swap_twins=args.swap_twins,
            shape_weights=shape_weights,
            bf16=args.bf16,
            edge_loss_strength=args.edge_loss if stage in IMAGE_DIFFUSION_STAGES else None,
            swap_attributes=tuple(args.swap_attributes) if args.swap_attributes else None,
        )
        for stage in stages
    }


def run(args: argparse.Namespace) -> int:
    from models.training.runner import train_all, train_stage
    from models.training.stages import make_source

    if args.threads:
        torch.set_num_threads(args.threads)
    config = get_config(args.config)
    if args.crop_fraction is not None:
        if not 0.0 < args.crop_fraction <= 1.0:
            raise SystemExit("unclip train: --crop-fraction must be in (0, 1]")
        config = replace(
            config,
            sr256=replace(config.sr256, crop_fraction=args.crop_fraction),
            sr1024=replace(config.sr1024, crop_fraction=args.crop_fraction),
        )
    if args.high_noise_fraction is not None and not 0.0 <= args.high_noise_fraction <= 1.0:
        raise SystemExit("unclip train: --high-noise-fraction must be in [0, 1]")
    if args.edge_loss is not None and args.edge_loss < 0:
        raise SystemExit("unclip train: --edge-loss must be >= 0")
    if args.text_drop is not None:
        if not 0.0 <= args.text_drop <= 1.0:
            raise SystemExit("unclip train: --text-drop must be in [0, 1]")
        config = replace(config, decoder=replace(config.decoder, text_drop_prob=args.text_drop))
    if args.init_from and args.all:
        raise SystemExit("unclip train: --init-from works with --stage, not --all")
    shape_weights = _parse_shape_weights(args.shape_weights)
    if shape_weights and args.data_dir:
        raise SystemExit("unclip train: --shape-weights is for the shapes world, not --data-dir")
    source = make_source(args.data_dir)
    stages = list(STAGES) if args.all else [args.stage]
    trains = train_configs(args, stages, shape_weights)
    if args.replicas < 1:
        raise SystemExit("unclip train: --replicas must be at least 1")
    if args.swap_twins is not None and not 0.0 <= args.swap_twins <= 1.0:
        raise SystemExit("unclip train: --swap-twins must be in [0, 1]")
    if args.replicas > 1 and args.device != "cpu":
        raise SystemExit("unclip train: --replicas is for CPU cores; one process already fills a GPU")
    common = {
        "source": source,
        "device": args.device,
        "show_progress": not args.no_progress,
        "replicas": args.replicas,
        "threads_per_replica": args.threads or 1,
    }
    if args.all:
        results = train_all(config, trains, args.out, **common)
    else:
        results = [
            train_stage(args.stage, config, trains[args.stage], args.out, init_from=args.init_from, **common)
        ]
    return 130 if any(r.interrupted for r in results) else 0


def run_assemble(args: argparse.Namespace) -> int:
    from models.checkpoints import WeightsError
    from models.training.assemble import assemble

    try:
        taken = assemble(args.out, get_config(args.config), args.sources, args.stages, args.checkpoints)
    except (WeightsError, KeyError) as error:
        print(f"unclip assemble: {error}", file=sys.stderr)
        return 2
    for stage, source in taken.items():
        print(f"{stage}: {source}")
    return 0


def _minutes_per_stage(
    args: argparse.Namespace, stages: Sequence[StageName]
) -> dict[StageName, float | None]:
    if args.steps is not None:
        return dict.fromkeys(stages)
    if args.all:
        return dict(stage_minutes(args.minutes or DEFAULT_TOTAL_MINUTES))
    if args.minutes is not None:
        return {stages[0]: args.minutes}
    # One stage with no budget given: its share of the default budget.
    return {stages[0]: stage_minutes(DEFAULT_TOTAL_MINUTES)[stages[0]]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training.cli")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
