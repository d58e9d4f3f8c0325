"""The benchmark's machinery at small size: FLOP counting, the matched peer, one quick run.

Nothing here is timed: the run's speed figures are smoke, only their presence and the FLOP
counts are checked. diffusers comes from the benchmark's extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import flop_counter, peak_for, peak_probes
from models.configs import get_config
from models.execution import bf16_supported
from models.factory import create_stage_module
from models.nn import count_parameters


def test_flop_counter_counts_cpu_flash_attention() -> None:
    b, h, s_q, s_k, d = 2, 4, 64, 80, 32
    q, k, v = torch.randn(b, h, s_q, d), torch.randn(b, h, s_k, d), torch.randn(b, h, s_k, d)
    expected = 2 * (2 * b * h * s_q * s_k * d)  # q·kᵀ and p·v, a multiply-add = 2 FLOPs
    ours = flop_counter()
    with ours:
        F.scaled_dot_product_attention(q, k, v)  # contiguous: the fused CPU kernel
    assert ours.get_total_flops() == expected
    math_path = FlopCounterMode(display=False)
    with math_path:  # transposed views: the unfused path, counted as two bmm
        F.scaled_dot_product_attention(
            q.transpose(-1, -2).contiguous().transpose(-1, -2),
            k.transpose(-1, -2).contiguous().transpose(-1, -2),
            v.transpose(-1, -2).contiguous().transpose(-1, -2),
        )
    assert math_path.get_total_flops() == expected


def test_peak_probes_measure_every_kind() -> None:
    probes = peak_probes(torch.device("cpu"), quick=True)
    assert set(probes) == {
        f"{op}_{dtype}{layout}"
        for dtype in ("fp32", "bf16")
        for op, layout in (("matmul", ""), ("conv3x3", ""), ("conv3x3", "_channels_last"))
    }
    assert all(v > 0 for v in probes.values())


def test_peer_has_our_widths_and_our_unstemmed_flops() -> None:
    pytest.importorskip("diffusers")
    from bench.peer import build_peer, flop_matched

    config = get_config("tiny")
    peer = build_peer(config, config.prior.context_length)
    pairs = {
        "prior": [peer.prior],
        "decoder": [peer.decoder, peer.text_proj],
        "sr256": [peer.super_res_first],
    }
    for stage, modules in pairs.items():
        ours = count_parameters(create_stage_module(stage, config))
        theirs = sum(count_parameters(m) for m in modules)
        assert abs(ours - theirs) / ours < 0.05, (stage, ours, theirs)
    matched = flop_matched(config)
    ours_net = create_stage_module("sr256", matched).eval()
    x, low = torch.randn(1, 3, 256, 256), torch.randn(1, 3, 64, 64)
    t = torch.tensor([500])
    with torch.no_grad():
        counted = [flop_counter(), flop_counter()]
        with counted[0]:
            ours_net(x, t, low_res=low)
        with counted[1]:
            peer.super_res_first(torch.cat([x, F.interpolate(low, size=(256, 256))], dim=1), t)
    ours_flops, peer_flops = (c.get_total_flops() for c in counted)
    assert abs(ours_flops - peer_flops) / peer_flops < 0.02


@pytest.mark.slow
def test_quick_run_writes_json_and_markdown(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from bench.compare import main

    stem = tmp_path / "quick"
    assert main(["--quick", "--config", "tiny", "--variants", "default", "--out", str(stem)]) == 0
    results = json.loads(stem.with_suffix(".json").read_text())
    cpu = results["devices"]["cpu"]
    rows = {r["contender"]: r for r in cpu["end_to_end"]}
    assert set(rows) == {"ours:default", "diffusers"}
    for row in rows.values():
        assert row["s_per_image"] > 0 and row["images_per_s"] > 0
        assert set(row["stage_s_per_image"]) == {"prior", "decoder", "sr256"}
        assert row["gflop_per_image"]["total"] > 0
    # The decoder's and upsampler's 2×2 stems: diffusers does more work per image at equal widths.
    assert (
        rows["diffusers"]["gflop_per_image"]["total"] > 2 * rows["ours:default"]["gflop_per_image"]["total"]
    )
    forward = {(r["network"], r["contender"]): r for r in cpu["forward"]}
    for network in ("prior", "decoder", "sr256"):
        ours, theirs = forward[network, "ours:default"], forward[network, "diffusers"]
        assert abs(ours["gflop_per_row"] - theirs["gflop_per_row"]) / theirs["gflop_per_row"] < 0.1, network
    report = stem.with_suffix(".md").read_text()
    assert "### End to end (cpu)" in report and "| 256² | diffusers |" in report
    # % of peak against the precision each side computes in: ours' autocast is bf16 only where
    # this CPU has bf16 arithmetic; diffusers runs float32 here.
    probes = cpu["probes_gflop_per_s"]
    ours_bf16 = bf16_supported(torch.device("cpu"))
    for name, bf16 in (("ours:default", ours_bf16), ("diffusers", False)):
        row = rows[name]
        assert row["fraction_of_peak"] == pytest.approx(row["gflop_per_s"] / peak_for(probes, bf16)), name


def test_karlo_sized_configs_match_karlos_sizes() -> None:
    """The GPU comparison's sizes, counted on the meta device (nothing allocated)."""
    pytest.importorskip("diffusers")
    from bench.peer import build_peer, karlo_config

    config = karlo_config()
    with torch.device("meta"):
        peer = build_peer(config, config.prior.context_length)
        ours = {
            stage: count_parameters(create_stage_module(stage, config))
            for stage in ("prior", "decoder", "sr256")
        }
    theirs = {
        "prior": count_parameters(peer.prior),
        "decoder": count_parameters(peer.decoder) + count_parameters(peer.text_proj),
        "sr256": count_parameters(peer.super_res_first),
    }
    for stage in ours:
        assert abs(ours[stage] - theirs[stage]) / theirs[stage] < 0.02, stage
    # Karlo: a 1 B prior, a ≈ 900 M decoder, a ≈ 700 M upsampler (docs: shared/REFERENCE.md).
    assert (
        0.95e9 < ours["prior"] < 1.1e9 and 0.8e9 < ours["decoder"] < 1.0e9 and 0.65e9 < ours["sr256"] < 0.8e9
    )


def test_a_run_cut_short_leaves_what_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lent GPU's run can be stopped by its time limit: the files are written after every
    measured group, so the forwards measured before the stop are on disk."""
    pytest.importorskip("diffusers")
    import bench.compare

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # what the time limit's signal does mid-run

    monkeypatch.setattr(bench.compare, "end_to_end", stopped)
    stem = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        bench.compare.main(["--quick", "--config", "tiny", "--variants", "default", "--out", str(stem)])
    cpu = json.loads(stem.with_suffix(".json").read_text())["devices"]["cpu"]
    assert {r["network"] for r in cpu["forward"]} == {"prior", "decoder", "sr256"}
    assert "end_to_end" not in cpu
    assert "### One forward at equal FLOPs (cpu)" in stem.with_suffix(".md").read_text()
