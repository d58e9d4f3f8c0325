"""``bench.profile_step`` at small size on the CPU: what it reports is present and consistent.

Nothing is timed against a bound: the figures are whatever this machine gives, only their shape
and the relations between them (busy time from the ranked operators, launches counted) are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import profile_step


def _run(tmp_path: Path, *extra: str) -> dict:
    stem = tmp_path / "profile"
    argv = ["--config", "tiny", "--stage", "decoder", "--batch", "1", "--forwards", "2", "--warmup", "1"]
    assert profile_step.main([*argv, "--device", "cpu", "--out", str(stem), *extra]) == 0
    assert stem.with_suffix(".md").read_text().startswith("## decoder forward, batch 1, tiny on cpu")
    return json.loads(stem.with_suffix(".json").read_text())


def test_profile_of_our_decoder(tmp_path: Path) -> None:
    results = _run(tmp_path)
    assert list(results["contenders"]) == ["ours:default"]
    ours = results["contenders"]["ours:default"]
    assert ours["wall_ms"] > 0 and ours["busy_ms"] > 0
    assert ours["busy_fraction"] == pytest.approx(ours["busy_ms"] / ours["wall_ms"], abs=1e-3)
    assert ours["launches_per_forward"] > 100  # a UNet forward is hundreds of operators
    top = ours["top"]
    assert top and all(k["name"].startswith("aten::") for k in top)
    times = [k["ms_per_forward"] for k in top]
    assert times == sorted(times, reverse=True)
    assert any("convolution" in k["name"] for k in top)  # a UNet's time goes to its convolutions
    assert sum(k["share"] for k in top) <= 1.0 + 1e-6


def test_profile_beside_diffusers(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    results = _run(tmp_path, "--peer", "--variant", "nchw")
    assert list(results["contenders"]) == ["ours:nchw", "diffusers"]
    assert all(r["busy_ms"] > 0 for r in results["contenders"].values())


def test_no_peer_for_sr1024() -> None:
    with pytest.raises(SystemExit):
        profile_step.parse_args(["--stage", "sr1024", "--peer"])
