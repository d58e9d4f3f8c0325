"""Training hyperparameters per stage, and the named recipes (``TRAIN_PRESETS``).

The paper's values (Ramesh et al. 2022, Table 3) are for batches of 512–4096 over 600K–1M
steps: lr 1.0–1.2e-4, EMA 0.9999, and for the prior AdamW β2 0.96 with weight decay 6e-2.
The ``tiny`` recipe trains each stage for minutes on two CPU cores, so it uses the larger
learning rates that small networks tolerate, a short warmup, and an EMA decay matched to a few
thousand steps (the EMA's horizon, 1 / (1 - decay) steps, must be well below the run length).
``models/training/RECIPE.md`` has the measurements behind each choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from models.configs import STAGES, StageName

LossWeighting = Literal["uniform", "min_snr"]


@dataclass(frozen=True)
class TrainConfig:
    """How one stage is trained. ``steps`` and ``minutes`` both bound the run (whichever first)."""

    batch_size: int = 32
    steps: int | None = None
    minutes: float | None = None
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 50
    eval_every: int = 250  # steps between held-batch evaluations of the EMA weights (0: at the end only)
    checkpoint_every: int = 500  # steps
    checkpoint_minutes: float = 5.0  # also checkpoint at least this often
    # Diffusion stages: weighting of the simple (MSE) term over timesteps. "min_snr" is
    # Hang et al. 2023's min(SNR, gamma) / SNR for epsilon prediction.
    loss_weighting: LossWeighting = "uniform"
    min_snr_gamma: float = 5.0
    # Diffusion stages: this fraction of examples draws its timestep from the noisiest tenth of
    # the schedule instead of uniformly (models.training.stages.sample_timesteps).
    high_noise_fraction: float = 0.0
    # Upsamplers: of this many random crop positions keep the busiest (highest pixel variance),
    # so that crops land on the object rather than on flat background. 1 = plain random crops.
    crop_candidates: int = 1
    # CLIP on the shapes world: this fraction of each batch is replaced by twins of other examples
    # in it, each with one of ``swap_attributes`` changed (hard negatives, models.data.shapes.swap_twin).
    swap_twins: float = 0.0
    swap_attributes: tuple[str, ...] = ("position",)
    # The shapes world: relative frequencies of the shapes in the training stream, e.g.
    # (("circle", 1.0), ("star", 3.0)); empty = uniform. The held batch stays uniform.
    shape_weights: tuple[tuple[str, float], ...] = ()
    # Decoder and upsamplers: weigh each pixel's squared error by 1 + edge_loss_strength x the clean
    # image's normalised gradient magnitude (models.training.edges), so outlines count; 0 = plain.
    edge_loss_strength: float = 0.0
    # Mixed precision: the forward and backward under bfloat16 autocast (weights, optimizer and
    # EMA stay float32). On a Xeon with AMX the decoder trained 2.1x faster as two replicas
    # (models/training/RECIPE.md, section 10); without bf16 instructions it can be slower.
    bf16: bool = False
    # Data stream: batches are read in blocks of this many from one seeded stream each, so a
    # resume re-reads at most one block to find its place.
    block_batches: int = 50


def _tiny() -> dict[StageName, TrainConfig]:
    """The bundled model's recipe. Its budgets are steps, set in scripts/train-default-model.sh
    (every stage as two one-thread replicas); ``STAGE_SHARE`` splits a ``--minutes`` budget."""
    return {
        # Half of each batch as position-swap twins: without them this CLIP told left from right
        # but not top from bottom (row 40% within swap groups); 15 minutes of fine-tuning with them
        # took it to 96% (RECIPE.md, section 8).
        "clip": TrainConfig(
            batch_size=128, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=100, swap_twins=0.5
        ),
        "prior": TrainConfig(
            batch_size=128, lr=5e-4, betas=(0.9, 0.96), weight_decay=6e-2, warmup_steps=100, ema_decay=0.999
        ),
        # v-prediction with a uniform weight on v is an x0 weight of SNR + 1 >= 1: the noisy
        # timesteps, where sampling from pure noise decides color and layout, keep full weight
        # (min-SNR would give them SNR << 1).
        # Half the examples at the noisiest tenth of the schedule, where sampling starts and only
        # the conditions can place the object (RECIPE.md, section 7).
        # Outline-weighted loss (edge strength 9: the outline band, ~6% of a picture's pixels, gets
        # about a third of the loss): the first change in three sessions that moved the shapes the
        # decoder draws from noise (RECIPE.md, section 10).
        "decoder": TrainConfig(
            batch_size=16,
            lr=1e-3,
            warmup_steps=100,
            ema_decay=0.999,
            high_noise_fraction=0.5,
            edge_loss_strength=9.0,
        ),
        "sr256": TrainConfig(batch_size=16, lr=1e-3, warmup_steps=100, ema_decay=0.995, crop_candidates=4),
        "sr1024": TrainConfig(batch_size=4, lr=1e-3, warmup_steps=50, ema_decay=0.99, crop_candidates=4),
    }


def _paper() -> dict[StageName, TrainConfig]:
    """Table 3 of the paper (batch sizes are global batches over many GPUs)."""
    return {
        "clip": TrainConfig(
            batch_size=32768, lr=5e-4, betas=(0.9, 0.98), weight_decay=0.2, warmup_steps=2000
        ),
        "prior": TrainConfig(
            batch_size=4096, steps=600_000, lr=1.1e-4, betas=(0.9, 0.96), weight_decay=6e-2, ema_decay=0.9999
        ),
        "decoder": TrainConfig(batch_size=2048, steps=800_000, lr=1.2e-4, ema_decay=0.9999),
        "sr256": TrainConfig(batch_size=1024, steps=1_000_000, lr=1.2e-4, ema_decay=0.9999),
        "sr1024": TrainConfig(batch_size=512, steps=1_000_000, lr=1.0e-4, ema_decay=0.9999),
    }


TRAIN_PRESETS = {"tiny": _tiny, "paper": _paper}

# The share of a ``train --all --minutes M`` budget each stage gets (tiny, 2 CPU cores): the
# decoder decides color, shape, size and position; CLIP must separate them for the decoder.
STAGE_SHARE: dict[StageName, float] = {
    "clip": 16 / 154,
    "prior": 10 / 154,
    "decoder": 90 / 154,
    "sr256": 30 / 154,
    "sr1024": 8 / 154,
}
# The default ``train --all`` budget in stage-minutes (about 2.5 hours one stage after another).
# The bundled model's own run (scripts/train-default-model.sh) has budgets in steps instead.
DEFAULT_TOTAL_MINUTES = 154.0


def get_train_config(preset: str, stage: StageName, **overrides: Any) -> TrainConfig:
    """A stage's recipe from a preset (``tiny`` for unknown model presets), with overrides
    (``None`` values are ignored)."""
    recipes = TRAIN_PRESETS.get(preset, _tiny)()
    base = recipes[stage]
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def stage_minutes(total_minutes: float) -> dict[StageName, float]:
    """Split a total time budget across the stages by ``STAGE_SHARE``."""
    return {stage: total_minutes * STAGE_SHARE[stage] for stage in STAGES}
