"""The service-overhead benchmark: its statistics, and one short real run (a real API process, a
real worker process, Redis) that writes its JSON and markdown. Nothing here is timed: the run's
figures are checked for consistency only (every part non-negative, the parts within the whole)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.service_overhead import POLICIES, main, percentile, summarize


def test_percentile_and_summary() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) in (5.0, 6.0)
    assert percentile(values, 0.9) == 9.0 and percentile(values, 1.0) == 10.0
    summary = summarize([{"overhead": v, "model": 2 * v} for v in values])
    assert summary["overhead"]["p50"] == 5.5 and summary["model"]["mean"] == 11.0


@pytest.mark.slow
def test_a_short_run_measures_both_policies(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNCLIP_REDIS_URL", redis_url)
    stem = tmp_path / "overhead"
    assert main(["--jobs", "3", "--warmup", "1", "--weights", "random:tiny", "--out", str(stem)]) == 0
    results = json.loads(stem.with_suffix(".json").read_text())
    assert [row["policy"] for row in results["rows"]] == [p.name for p in POLICIES]
    for row in results["rows"]:
        ms = row["ms"]
        assert all(ms[part]["p50"] >= 0 for part in ("submit", "queue", "worker", "model"))
        # Per job, queue + worker = finished - created - model, and the job is created after its
        # POST was sent: the parts lie within the whole (so do their means).
        assert ms["queue"]["mean"] + ms["worker"]["mean"] <= ms["overhead"]["mean"] + 1e-6
    waits = {row["policy"]: row["ms"]["queue"]["p50"] for row in results["rows"]}
    # The policy that holds the window open waits it out (50 ms by default) on every lone job.
    assert waits[POLICIES[1].name] >= results["max_wait_ms"]
    assert "| worker policy |" in stem.with_suffix(".md").read_text()
