"""Train one stage or the whole chain into a model directory.

``<out>/`` becomes a weights directory (``manifest.json`` + one ``<stage>.safetensors`` per stage,
the EMA weights, see :mod:`models.checkpoints`); ``<out>/checkpoints/<stage>.pt`` hold the full
training state for resuming and ``<out>/logs/<stage>.jsonl`` the training logs. The manifest's
``notes`` is a JSON object with each stage's steps, examples, seconds and recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import structlog
import torch

from models.checkpoints import WeightsError, load_into, load_stage_state, read_manifest, save_weights
from models.configs import STAGES, ModelConfig, StageName
from models.training.config import TrainConfig
from models.training.loop import Trainer, TrainResult
from models.training.replicas import Replica, run_replicas
from models.training.stages import StageContext, create_task

log = structlog.get_logger("models.training")

MAX_FILE_BYTES = 16 * 1024 * 1024  # each shipped weights file stays under 16 MiB
CLIP_READERS: tuple[StageName, ...] = ("prior", "decoder")  # stages conditioned on the frozen CLIP


def train_stage(
    stage: StageName,
    config: ModelConfig,
    train: TrainConfig,
    out_dir: str | Path,
    *,
    source: Any,
    device: str = "cpu",
    show_progress: bool = True,
    init_from: str | Path | None = None,
    replicas: int = 1,
    threads_per_replica: int = 1,
) -> TrainResult:
    """Train (or resume) one stage to its budget and export its EMA weights into ``out_dir``.

    ``init_from``: a weights directory whose weights for this stage start the network instead of
    a fresh initialisation (fine-tuning); a checkpoint in ``out_dir`` still wins (resume). The prior
    and the decoder read a frozen CLIP: when ``out_dir`` has none, ``init_from``'s is copied in
    first, since those weights were trained against it.

    ``replicas`` > 1 trains data-parallel in that many processes of ``threads_per_replica``
    threads each (:mod:`models.training.replicas`); every replica takes a batch of
    ``train.batch_size``, so a step sees ``replicas`` times as many examples.
    """
    out_dir = Path(out_dir)
    if init_from is not None and stage in CLIP_READERS and not (out_dir / "clip.safetensors").exists():
        export_stage(
            out_dir,
            config,
            "clip",
            load_stage_state(init_from, "clip"),
            notes={"copied_from": str(init_from)},
        )
        log.info("copied the frozen CLIP", stage=stage, source=str(init_from))
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    job = (stage, config, train, out_dir, source, device, show_progress, init_from)
    if replicas == 1:
        return _train_replica(Replica(), *job)
    result: TrainResult = run_replicas(_train_replica, replicas, *job, threads=threads_per_replica)
    return result


def _train_replica(
    replica: Replica,
    stage: StageName,
    config: ModelConfig,
    train: TrainConfig,
    out_dir: Path,
    source: Any,
    device: str,
    show_progress: bool,
    init_from: str | Path | None,
) -> TrainResult:
    """One process's part of :func:`train_stage` (all of it for a one-process run)."""
    # Each replica's task reads its own data stream; the initial weights come from train.seed.
    task_train = replace(train, seed=replica.data_seed(train.seed))
    ctx = StageContext(
        config=config, train=task_train, source=source, out_dir=out_dir, device=torch.device(device)
    )
    torch.manual_seed(train.seed)  # the initial weights
    task = create_task(stage, ctx)
    if init_from is not None:
        fresh = init_from_weights(task.module, init_from, stage)
        if replica.leader:
            log.info("initialised from weights", stage=stage, source=str(init_from), fresh_tensors=fresh)
    trainer = Trainer(
        task,
        train,
        out_dir,
        device=device,
        show_progress=show_progress,
        evaluate=task.evaluate,
        replica=replica,
    )
    result = trainer.run()
    if not replica.leader:
        return result
    if not result.interrupted:
        notes = _notes(result, train)
        notes["recipe"].update(_condition_drops(config, stage))
        if init_from is not None:
            notes["init_from"] = str(init_from)
        if replica.distributed:
            notes["recipe"]["replicas"] = replica.world
        export_stage(out_dir, config, stage, trainer.averaged_state_dict(), notes=notes)
    log.info("stage done", **{k: v for k, v in asdict(result).items() if k != "metrics"})
    return result


def init_from_weights(module: torch.nn.Module, directory: str | Path, stage: StageName) -> list[str]:
    """Load ``directory``'s weights for ``stage`` into ``module`` for fine-tuning.

    Tensors the weights lack keep their fresh initialisation (a path the network gained since,
    e.g. ``UNetConfig.text_pool_to_time``, which starts at zero); their names are returned. A
    tensor the network lacks, or of another shape, is an error: those weights are of another
    architecture.
    """
    state = load_stage_state(directory, stage)
    expected = module.state_dict()
    fresh = sorted(k for k in expected if k not in state)
    label = f"{Path(directory) / stage}.safetensors"
    load_into(module, {**{k: expected[k] for k in fresh}, **state}, file_label=label)
    return fresh


def train_all(
    config: ModelConfig,
    trains: dict[StageName, TrainConfig],
    out_dir: str | Path,
    *,
    source: Any,
    device: str = "cpu",
    show_progress: bool = True,
    replicas: int = 1,
    threads_per_replica: int = 1,
) -> list[TrainResult]:
    """clip → prior → decoder → sr256 → sr1024, each resumed from its checkpoint if there is one."""
    results = []
    for stage in STAGES:
        result = train_stage(
            stage,
            config,
            trains[stage],
            out_dir,
            source=source,
            device=device,
            show_progress=show_progress,
            replicas=replicas,
            threads_per_replica=threads_per_replica,
        )
        results.append(result)
        if result.interrupted:
            break
    return results


def _notes(result: TrainResult, train: TrainConfig) -> dict[str, Any]:
    recipe = {
        k: v
        for k, v in asdict(train).items()
        if k in ("batch_size", "lr", "ema_decay", "seed", "loss_weighting", "high_noise_fraction")
    }
    if train.edge_loss_strength:
        recipe["edge_loss_strength"] = train.edge_loss_strength
    if train.bf16:
        recipe["bf16"] = True
    if train.shape_weights:
        recipe["shape_weights"] = dict(train.shape_weights)
    if train.swap_twins:
        recipe["swap_twins"] = train.swap_twins
        recipe["swap_attributes"] = list(train.swap_attributes)
    return {**result.as_notes(), "recipe": recipe}


def _condition_drops(config: ModelConfig, stage: StageName) -> dict[str, float]:
    """The classifier-free-guidance drop rates a stage trained with. They live in the model config,
    which ``unclip assemble`` replaces, so the notes keep them."""
    if stage == "decoder":
        return {
            "clip_drop_prob": config.decoder.clip_drop_prob,
            "text_drop_prob": config.decoder.text_drop_prob,
        }
    if stage == "prior":
        return {"text_drop_prob": config.prior.text_drop_prob}
    return {}


def export_stage(
    out_dir: str | Path,
    config: ModelConfig,
    stage: StageName,
    state: dict[str, torch.Tensor],
    notes: dict[str, Any],
) -> Path:
    """Write one stage's weights into the model directory, keeping the other stages.

    Weights are stored in float32 unless that would exceed 16 MiB (CLIP's 49408-token embedding),
    then in float16.
    """
    out_dir = Path(out_dir)
    size = sum(t.numel() * t.element_size() for t in state.values())
    if size > MAX_FILE_BYTES:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    all_notes = _read_notes(out_dir, config)
    all_notes[stage] = notes
    path = save_weights(out_dir, config, {stage: state}, notes=json.dumps(all_notes, sort_keys=True))
    written = (out_dir / f"{stage}.safetensors").stat().st_size
    if written > MAX_FILE_BYTES:
        log.warning("weights file over 16 MiB", stage=stage, bytes=written)
    return path


def _read_notes(out_dir: Path, config: ModelConfig) -> dict[str, Any]:
    try:
        manifest = read_manifest(out_dir)
    except WeightsError:
        return {}
    if manifest.config != config or not manifest.notes:
        return {}
    try:
        notes = json.loads(manifest.notes)
    except json.JSONDecodeError:
        return {}
    return notes if isinstance(notes, dict) else {}
