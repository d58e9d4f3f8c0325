"""One short CPU training run per stage on the real networks and data: the loss on a fixed held
batch goes down; ``train --all`` writes a loadable model directory."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoints import WeightsError, load_stage_state, read_manifest, save_weights
from models.clip import build_clip_model
from models.configs import (
    ClipConfig,
    DiffusionConfig,
    ModelConfig,
    PriorConfig,
    UNetConfig,
    UpsamplerConfig,
    get_config,
)
from models.data.source import FolderSource, ShapesSource
from models.training.config import TrainConfig
from models.training.loop import Trainer
from models.training.runner import train_all
from models.training.stages import StageContext, create_task

# Small widths and sides so that every stage takes a few seconds on two cores.
CLIP = ClipConfig(
    name="unclip-test-train-clip",
    embed_dim=32,
    image_size=32,
    vision_width=64,
    vision_layers=1,
    vision_patch_size=8,
    vision_head_width=32,
    context_length=16,
    text_width=64,
    text_heads=2,
    text_layers=1,
)
UNET = UNetConfig(
    image_size=32,
    model_channels=16,
    channel_mult=(1, 2),
    attention_resolutions=(16,),
    num_head_channels=16,
    clip_embed_dim=32,
    text_width=64,
)
SR_UNET = UNetConfig(
    image_size=64, model_channels=8, channel_mult=(1, 2), attention_resolutions=(), low_res_channels=3
)
CONFIG = ModelConfig(
    name="test-train",
    clip=CLIP,
    prior=PriorConfig(embed_dim=32, text_width=64, context_length=16, width=64, layers=2, heads=2),
    decoder=replace(ModelConfig().decoder, unet=UNET),
    sr256=UpsamplerConfig(low_res_size=16, unet=SR_UNET),
    sr1024=replace(ModelConfig().sr1024, low_res_size=32, unet=replace(SR_UNET, image_size=128)),
)
RECIPE = TrainConfig(batch_size=8, steps=25, lr=2e-3, warmup_steps=5, ema_decay=0.9, log_every=25)


# One intra-op thread (tests/conftest.py): these small networks run several times faster so on a
# busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding a (random) CLIP, which the prior and the decoder condition on."""
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_weights(out, CONFIG, {"clip": build_clip_model(CONFIG.clip)})
    return out


def held_loss(task, batch) -> float:  # type: ignore[no-untyped-def]
    task.module.eval()
    with torch.no_grad():
        loss, _ = task.loss(batch, torch.Generator().manual_seed(123))
    return float(loss)


@pytest.mark.parametrize(
    ("stage", "batch_size"),
    [
        ("clip", 16),
        ("prior", 32),
        pytest.param("decoder", 8, marks=pytest.mark.slow),
        ("sr256", 8),
        ("sr1024", 4),
    ],
)
def test_short_run_lowers_held_loss(stage: str, batch_size: int, clip_dir: Path, tmp_path: Path) -> None:
    recipe = replace(RECIPE, batch_size=batch_size)
    ctx = StageContext(CONFIG, recipe, ShapesSource(), clip_dir, torch.device("cpu"))
    torch.manual_seed(0)
    task = create_task(stage, ctx)  # type: ignore[arg-type]
    held = task.batch(10**7, torch.Generator().manual_seed(7))  # a step the run never reaches
    before = held_loss(task, held)
    result = Trainer(task, recipe, tmp_path, show_progress=False).run()
    after = held_loss(task, held)
    assert result.steps == recipe.steps
    assert after < 0.9 * before, f"{stage}: held loss {before:.4f} -> {after:.4f}"


def test_train_all_writes_a_model_directory(tmp_path: Path) -> None:
    trains = {
        s: replace(RECIPE, steps=2, batch_size=2) for s in ("clip", "prior", "decoder", "sr256", "sr1024")
    }
    results = train_all(CONFIG, trains, tmp_path, source=ShapesSource(), show_progress=False)  # type: ignore[arg-type]
    assert [r.steps for r in results] == [2] * 5
    manifest = read_manifest(tmp_path)
    assert manifest.config == CONFIG and set(manifest.stages) == {
        "clip",
        "prior",
        "decoder",
        "sr256",
        "sr1024",
    }
    assert manifest.notes is not None and '"decoder"' in manifest.notes
    for stage in manifest.stages:
        assert (tmp_path / f"{stage}.safetensors").stat().st_size <= 16 * 1024 * 1024
        assert (tmp_path / "checkpoints" / f"{stage}.pt").is_file()


def test_cli_trains_clip_on_a_folder_and_resumes(tmp_path: Path) -> None:
    from PIL import Image

    from models.training.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 30), color).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {color} picture")
    out = tmp_path / "model"
    args = ["--stage", "clip", "--steps", "2", "--batch-size", "4", "--threads", "1", "--no-progress"]
    assert main([*args, "--data-dir", str(data), "--out", str(out)]) == 0
    assert main([*args, "--steps", "3", "--data-dir", str(data), "--out", str(out)]) == 0  # resumes at 2
    assert torch.load(out / "checkpoints" / "clip.pt", weights_only=False)["step"] == 3
    assert set(read_manifest(out).stages) == {"clip"}


@pytest.mark.slow
def test_cli_crop_fraction_trains_an_upsampler_on_whole_images(tmp_path: Path) -> None:
    from models.training.cli import main

    args = ["--stage", "sr256", "--steps", "1", "--batch-size", "1", "--threads", "1", "--no-progress"]
    assert main([*args, "--crop-fraction", "1", "--out", str(tmp_path)]) == 0
    assert read_manifest(tmp_path).config.sr256.crop_fraction == 1.0
    with pytest.raises(SystemExit, match="crop-fraction"):
        main([*args, "--crop-fraction", "0", "--out", str(tmp_path / "bad")])


V_PATCH_CONFIG = replace(
    CONFIG,
    decoder=replace(
        CONFIG.decoder,
        unet=replace(UNET, patch_size=2, position_embedding=True, attention_resolutions=(8,)),
        diffusion=DiffusionConfig(schedule="cosine", prediction="v"),
    ),
)


@pytest.mark.slow
def test_v_prediction_patch_decoder_short_run_lowers_held_loss(clip_dir: Path, tmp_path: Path) -> None:
    """The tiny preset's decoder recipe (v-prediction, 2x2 stem, position embedding) at test size."""
    save_weights(tmp_path / "model", V_PATCH_CONFIG, {"clip": load_stage_state(clip_dir, "clip")})
    recipe = replace(RECIPE, batch_size=8, steps=60, log_every=60)
    ctx = StageContext(V_PATCH_CONFIG, recipe, ShapesSource(), tmp_path / "model", torch.device("cpu"))
    torch.manual_seed(0)
    task = create_task("decoder", ctx)
    held = task.batch(10**7, torch.Generator().manual_seed(7))
    before = held_loss(task, held)
    Trainer(task, recipe, tmp_path / "model", show_progress=False).run()
    after = held_loss(task, held)
    assert after < 0.9 * before, f"held loss {before:.4f} -> {after:.4f}"


def test_assemble_combines_stages_trained_apart(tmp_path: Path) -> None:
    from cli.main import main
    from models.factory import create_stage_module
    from models.training.assemble import assemble

    torch.manual_seed(0)
    sources = {"clip": tmp_path / "a", "sr256": tmp_path / "b"}
    for stage, out in sources.items():
        notes = json.dumps({stage: {"steps": 2}})
        save_weights(out, CONFIG, {stage: create_stage_module(stage, CONFIG)}, notes=notes)  # type: ignore[arg-type]
    taken = assemble(tmp_path / "c", CONFIG, list(sources.values()))
    assert taken == sources
    manifest = read_manifest(tmp_path / "c")
    assert set(manifest.stages) == {"clip", "sr256"} and manifest.config == CONFIG
    for stage, source in taken.items():
        copied, original = load_stage_state(tmp_path / "c", stage), load_stage_state(source, stage)
        assert copied.keys() == original.keys()
        assert all(torch.equal(copied[k], original[k]) for k in copied)
    assert manifest.notes is not None and json.loads(manifest.notes)["sr256"] == {"steps": 2}
    # A stage that is in none of the sources, and tensors that do not fit the config, are refused.
    with pytest.raises(WeightsError, match="prior"):
        assemble(tmp_path / "d", CONFIG, [tmp_path / "a"], stages=["prior"])
    with pytest.raises(WeightsError, match="does not fit"):
        assemble(tmp_path / "d", get_config("tiny"), [tmp_path / "b"])
    out = tmp_path / "e"
    assert (
        main(["assemble", str(tmp_path / "a"), "--config", CONFIG.name, "--out", str(out)]) == 2
    )  # unknown preset
    assert main(["assemble", str(tmp_path / "b"), "--config", "tiny", "--out", str(out)]) == 2
    assert not (out / "manifest.json").exists()


def test_assemble_snapshots_a_stage_from_its_checkpoint(tmp_path: Path) -> None:
    """A run still training has only a checkpoint: ``--checkpoints`` exports its EMA weights (what
    the run would export if it ended at that step) beside the finished stages' weights."""
    from cli.main import main
    from models.training.assemble import assemble

    run = tmp_path / "run"
    ctx = StageContext(
        config=CONFIG, train=RECIPE, source=ShapesSource(), out_dir=run, device=torch.device("cpu")
    )
    torch.manual_seed(0)
    task = create_task("sr256", ctx)
    trainer = Trainer(task, replace(RECIPE, batch_size=2, steps=3), run, show_progress=False)
    trainer.run()  # a checkpoint of step 3, no exported weights (the runner exports at the end)
    torch.manual_seed(1)
    save_weights(run, CONFIG, {"clip": build_clip_model(CONFIG.clip)})  # a finished stage

    taken = assemble(tmp_path / "snap", CONFIG, [run], from_checkpoints=["sr256"])
    assert taken == {"clip": run, "sr256": run / "checkpoints" / "sr256.pt"}
    snapshot = load_stage_state(tmp_path / "snap", "sr256")
    expected = trainer.averaged_state_dict()
    assert snapshot.keys() == expected.keys()
    assert all(torch.equal(snapshot[k], expected[k]) for k in expected)
    live = task.module.state_dict()
    assert any(not torch.equal(snapshot[k], live[k]) for k in live)  # the average, not the live weights
    notes = json.loads(read_manifest(tmp_path / "snap").notes or "{}")
    assert notes["sr256"]["steps"] == 3 and notes["sr256"]["snapshot_of"].endswith("sr256.pt")

    with pytest.raises(WeightsError, match="no checkpoint of stage 'prior'"):
        assemble(tmp_path / "snap2", CONFIG, [run], from_checkpoints=["prior"])
    out = tmp_path / "cli"
    args = ["assemble", str(run), "--config", CONFIG.name, "--checkpoints", "sr256", "--out", str(out)]
    assert main(args) == 2  # the test config is no preset: refused before anything is written
    assert not (out / "manifest.json").exists()


POOLED_CONFIG = replace(CONFIG, decoder=replace(CONFIG.decoder, unet=replace(UNET, text_pool_to_time=True)))


def test_init_from_fine_tunes_and_keeps_new_paths_fresh(clip_dir: Path, tmp_path: Path) -> None:
    """A decoder trained without the pooled-text path starts a network with it: every old tensor is
    copied, the new path starts at zero (same outputs), and the run's notes say where it started."""
    from models.factory import create_stage_module
    from models.training.runner import init_from_weights, train_stage

    torch.manual_seed(0)
    old = create_stage_module("decoder", CONFIG)
    for p in old.parameters():  # zero-initialised layers too, so that copying shows
        p.data.normal_(0, 0.05)
    save_weights(tmp_path / "old", CONFIG, {"clip": load_stage_state(clip_dir, "clip"), "decoder": old})
    new = create_stage_module("decoder", POOLED_CONFIG)
    fresh = init_from_weights(new, tmp_path / "old", "decoder")
    assert fresh == [
        f"conditioning.{name}"
        for name in (
            "text_pool.scores.bias",
            "text_pool.scores.weight",
            "text_pool.values.bias",
            "text_pool.values.weight",
            "text_to_time.bias",
            "text_to_time.weight",
        )
    ]
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    kwargs = {"clip_embed": torch.randn(2, 32), "text_tokens": torch.randn(2, 5, 64)}
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x, t, **kwargs), old.eval()(x, t, **kwargs))
    # Weights of another architecture are refused, naming the file.
    other = create_stage_module(
        "decoder",
        replace(POOLED_CONFIG, decoder=replace(CONFIG.decoder, unet=replace(UNET, model_channels=8))),
    )
    with pytest.raises(WeightsError, match="shape"):
        init_from_weights(other, tmp_path / "old", "decoder")
    # Into an empty directory: the CLIP the old decoder was trained against comes along.
    recipe = replace(RECIPE, batch_size=2, steps=2)
    train_stage(
        "decoder",
        POOLED_CONFIG,
        recipe,
        tmp_path / "new",
        source=ShapesSource(),
        show_progress=False,
        init_from=tmp_path / "old",
    )
    notes = json.loads(read_manifest(tmp_path / "new").notes or "{}")
    assert notes["decoder"]["init_from"] == str(tmp_path / "old")
    assert notes["decoder"]["recipe"]["text_drop_prob"] == POOLED_CONFIG.decoder.text_drop_prob
    assert notes["clip"] == {"copied_from": str(tmp_path / "old")}
    copied, source = load_stage_state(tmp_path / "new", "clip"), load_stage_state(clip_dir, "clip")
    assert copied.keys() == source.keys()
    for name, tensor in source.items():
        torch.testing.assert_close(copied[name], tensor)


def test_cli_init_from_needs_one_stage(tmp_path: Path) -> None:
    from models.training.cli import main

    with pytest.raises(SystemExit, match="init-from"):
        main(["--all", "--steps", "1", "--init-from", str(tmp_path), "--out", str(tmp_path / "m")])


@pytest.mark.parametrize("flag", ["--text-drop", "--high-noise-fraction"])
def test_cli_fractions_are_probabilities(flag: str, tmp_path: Path) -> None:
    from models.training.cli import main

    with pytest.raises(SystemExit, match=flag.lstrip("-")):
        main(["--stage", "decoder", "--steps", "1", flag, "1.5", "--out", str(tmp_path / "m")])


@pytest.mark.slow
def test_decoder_trains_data_parallel_in_two_replicas(clip_dir: Path, tmp_path: Path) -> None:
    """The real decoder task in two gloo replicas: one weights export by replica 0, with the
    examples of both and the replica count in its notes."""
    import shutil

    from models.training.runner import train_stage

    shutil.copytree(clip_dir, tmp_path, dirs_exist_ok=True)  # the CLIP the decoder reads
    recipe = replace(RECIPE, batch_size=2, steps=3)
    result = train_stage(
        "decoder", CONFIG, recipe, tmp_path, source=ShapesSource(), show_progress=False, replicas=2
    )
    assert result.steps == 3 and result.examples == 3 * 2 * 2 and not result.interrupted
    notes = json.loads(read_manifest(tmp_path).notes or "{}")
    assert notes["decoder"]["examples"] == 12 and notes["decoder"]["recipe"]["replicas"] == 2
    assert set(read_manifest(tmp_path).stages) == {"clip", "decoder"}


def test_cli_replicas_are_for_the_cpu(tmp_path: Path) -> None:
    from models.training.cli import main

    with pytest.raises(SystemExit, match="replicas"):
        main(["--stage", "decoder", "--steps", "1", "--replicas", "0", "--out", str(tmp_path / "m")])
    with pytest.raises(SystemExit, match="replicas"):
        main(
            [
                "--stage",
                "decoder",
                "--steps",
                "1",
                "--replicas",
                "2",
                "--device",
                "cuda",
                "--out",
                str(tmp_path),
            ]
        )


def test_clip_batches_carry_swap_twins(tmp_path: Path) -> None:
    """With swap_twins 0.5 the first quarter of a CLIP batch and the last quarter, reversed, are
    pairs that differ in position only, and the rest is the plain stream."""
    from models.data.shapes import parse_caption

    recipe = replace(RECIPE, batch_size=16, swap_twins=0.5)
    ctx = StageContext(CONFIG, recipe, ShapesSource(), tmp_path, torch.device("cpu"))
    task = create_task("clip", ctx)
    plain = create_task("clip", replace(ctx, train=replace(recipe, swap_twins=0.0)))
    generator = torch.Generator().manual_seed(0)
    batch = task.batch(3, generator)
    stream = task.stream.batch(3)
    captions = [example.caption for example in stream]
    tokens = task.tokenizer(captions)
    assert torch.equal(batch["tokens"][4:12], tokens[4:12])  # untouched middle
    assert torch.equal(plain.batch(3, torch.Generator().manual_seed(0))["tokens"], tokens)
    pairs = 0
    for i in range(4):
        first = parse_caption(task.tokenizer.decode(batch["tokens"][i].tolist()))
        twin = parse_caption(task.tokenizer.decode(batch["tokens"][15 - i].tolist()))
        differ = {
            a
            for a in ("color", "shape", "size", "position", "background")
            if getattr(first, a) != getattr(twin, a)
        }
        pairs += differ == {"position"}
    assert pairs == 4


def test_shape_weights_shape_the_training_stream_not_the_held_batch(tmp_path: Path) -> None:
    recipe = replace(RECIPE, batch_size=16, shape_weights=(("star", 1.0),))
    ctx = StageContext(CONFIG, recipe, ShapesSource(), tmp_path, torch.device("cpu"))
    task = create_task("clip", ctx)
    assert {example.spec.shape for step in range(3) for example in task.stream.batch(step)} == {"star"}
    held = create_task("clip", replace(ctx, train=RECIPE)).held_batch()
    assert torch.equal(task.held_batch()["tokens"], held["tokens"])
    with pytest.raises(ValueError, match="shapes world"):
        folder = tmp_path / "folder"
        folder.mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
        (folder / "a.txt").write_text("a thing")
        create_task("clip", replace(ctx, source=FolderSource(folder)))


@pytest.mark.parametrize("weights", [["star"], ["star=x"], ["hexagon=1"], ["star=0"]])
def test_cli_shape_weights_are_checked(weights: list[str], tmp_path: Path) -> None:
    from models.training.cli import main

    with pytest.raises(SystemExit, match="shape-weights"):
        main(
            ["--stage", "decoder", "--steps", "1", "--shape-weights", *weights, "--out", str(tmp_path / "m")]
        )


def test_cli_edge_loss_is_not_negative(tmp_path: Path) -> None:
    from models.training.cli import main

    with pytest.raises(SystemExit, match="edge-loss"):
        main(["--stage", "decoder", "--steps", "1", "--edge-loss", "-1", "--out", str(tmp_path / "m")])


def test_cli_edge_loss_reaches_the_image_stages_only(tmp_path: Path) -> None:
    """With --all the prior (embeddings, not images) and CLIP keep their plain losses."""
    from models.configs import STAGES
    from models.training.cli import add_arguments, train_configs

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--all", "--steps", "1", "--edge-loss", "4", "--out", str(tmp_path)])
    trains = train_configs(args, list(STAGES), None)
    assert {stage: train.edge_loss_strength for stage, train in trains.items()} == {
        "clip": 0.0,
        "prior": 0.0,
        "decoder": 4.0,
        "sr256": 4.0,
        "sr1024": 4.0,
    }
