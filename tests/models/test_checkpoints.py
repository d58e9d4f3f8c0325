"""models/checkpoints.py: the safetensors + manifest weights folder, with small modules."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from models import checkpoints
from models.checkpoints import (
    MANIFEST_NAME,
    WeightsError,
    load_into,
    load_stage_into,
    load_stage_state,
    read_manifest,
    save_weights,
    sha256_file,
)
from models.clip import build_clip_model
from models.configs import ClipConfig, ModelConfig, get_config


def _small_net(out: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, out), nn.BatchNorm1d(out), nn.Linear(out, 3))  # BN: an int64 buffer


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_fp32_round_trip_is_bitwise(tmp_path: Path, tiny_clip: nn.Module) -> None:
    config = get_config("tiny")
    net = _small_net()
    save_weights(tmp_path, config, {"clip": tiny_clip, "prior": net})
    _assert_bitwise_equal(load_stage_state(tmp_path, "clip"), tiny_clip.state_dict())
    _assert_bitwise_equal(load_stage_state(tmp_path, "prior"), net.state_dict())
    fresh = build_clip_model(ClipConfig())
    load_stage_into(fresh, tmp_path, "clip")
    _assert_bitwise_equal(fresh.state_dict(), tiny_clip.state_dict())


def test_fp16_storage_equals_the_fp16_cast(tmp_path: Path) -> None:
    net = _small_net()
    save_weights(tmp_path, get_config("tiny"), {"decoder": net}, dtype=torch.float16)
    stored = load_stage_state(tmp_path, "decoder")
    expected = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    _assert_bitwise_equal(stored, expected)
    assert stored["1.num_batches_tracked"].dtype == torch.int64
    entry = read_manifest(tmp_path).stages["decoder"]
    assert entry.dtype == "float16"
    assert entry.parameters == sum(v.numel() for v in net.state_dict().values())
    target = _small_net()
    load_into(target, stored, file_label="decoder.safetensors")  # cast back to the module's float32
    assert target[0].weight.dtype == torch.float32
    assert torch.equal(target[0].weight, net[0].weight.half().float())


def test_manifest_round_trips_the_model_config(tmp_path: Path) -> None:
    config = replace(get_config("paper"), name="paper-variant", clip=replace(ClipConfig(), embed_dim=32))
    save_weights(tmp_path, config, {"prior": _small_net()}, notes="trained for 3 steps")
    manifest = read_manifest(tmp_path)
    assert manifest.config == config
    assert manifest.format_version == 1 and manifest.notes == "trained for 3 steps"
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["stages"]["prior"]["file"] == "prior.safetensors"
    assert raw["stages"]["prior"]["sha256"] == sha256_file(tmp_path / "prior.safetensors")
    assert raw["created"]


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    save_weights(tmp_path, get_config("tiny"), {"prior": _small_net()})
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    raw["format_version"] = 2
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="format_version 2"):
        read_manifest(tmp_path)


def test_corrupted_file_is_refused_naming_it(tmp_path: Path) -> None:
    save_weights(tmp_path, get_config("tiny"), {"prior": _small_net()})
    path = tmp_path / "prior.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a byte in the tensor data, not the header
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"prior\.safetensors.*expected [0-9a-f]{64}, actual [0-9a-f]{64}"):
        load_stage_state(tmp_path, "prior")
    assert load_stage_state(tmp_path, "prior", verify_hash=False).keys() == _small_net().state_dict().keys()


def test_shape_mismatch_is_refused_naming_the_tensor(tmp_path: Path, tiny_clip: nn.Module) -> None:
    save_weights(tmp_path, get_config("tiny"), {"clip": tiny_clip})
    other = build_clip_model(ClipConfig(name="unclip-checkpoint-test-clip", embed_dim=32))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(
        WeightsError,
        match=r"clip\.safetensors.*'text_projection': expected shape \(128, 32\), found \(128, 64\)",
    ):
        load_stage_into(other, tmp_path, "clip")
    _assert_bitwise_equal(other.state_dict(), before)  # nothing was copied


def test_missing_and_unexpected_keys_are_listed() -> None:
    state = _small_net().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"]
    with pytest.raises(
        WeightsError, match=r"f\.safetensors.*1 missing key\(s\) \['2\.bias'\].*'extra\.weight'"
    ):
        load_into(_small_net(), state, file_label="f.safetensors")


def test_missing_stage_file_or_stage_is_refused(tmp_path: Path) -> None:
    save_weights(tmp_path, get_config("tiny"), {"prior": _small_net()})
    with pytest.raises(WeightsError, match=r"'decoder' is not in the weights.*\['prior'\]"):
        load_stage_state(tmp_path, "decoder")
    (tmp_path / "prior.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"prior\.safetensors for stage 'prior' is missing"):
        load_stage_state(tmp_path, "prior")
    with pytest.raises(WeightsError, match="no weights manifest"):
        read_manifest(tmp_path / "elsewhere")


def test_atomic_writes_leave_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = get_config("tiny")
    save_weights(tmp_path, config, {"prior": _small_net()})
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "prior.safetensors"]
    manifest_before = (tmp_path / MANIFEST_NAME).read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_weights(tmp_path, config, {"decoder": _small_net()})
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "prior.safetensors"]
    assert (tmp_path / MANIFEST_NAME).read_bytes() == manifest_before
    load_stage_state(tmp_path, "prior")


def test_saving_a_subset_keeps_other_stages_of_the_same_config(tmp_path: Path) -> None:
    config = get_config("tiny")
    save_weights(tmp_path, config, {"prior": _small_net()})
    save_weights(tmp_path, config, {"decoder": _small_net(5)})
    assert list(read_manifest(tmp_path).stages) == ["prior", "decoder"]
    changed = replace(config, name="tiny-2")
    save_weights(tmp_path, changed, {"decoder": _small_net(5)})
    assert list(read_manifest(tmp_path).stages) == ["decoder"]


def test_state_dicts_and_tied_weights_can_be_saved(tmp_path: Path) -> None:
    shared = torch.randn(3, 4)
    state = {"a": shared, "b": shared, "c": shared[1:]}  # shared storage, a non-contiguous-offset view
    save_weights(tmp_path, ModelConfig(), {"prior": state})
    loaded = load_stage_state(tmp_path, "prior")
    _assert_bitwise_equal(loaded, {k: v.contiguous() for k, v in state.items()})
    assert safetensors.torch.load_file(str(tmp_path / "prior.safetensors")).keys() == state.keys()


def test_bad_dtype_and_stage_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        save_weights(tmp_path, ModelConfig(), {"prior": _small_net()}, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown stage"):
        save_weights(tmp_path, ModelConfig(), {"vae": _small_net()})  # type: ignore[dict-item]
