"""The benchmark's markdown: the tables docs/benchmark.md and the README quote."""

from __future__ import annotations

from typing import Any

STAGE_COLUMNS = ("prior", "decoder", "sr256", "sr1024")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def environment_line(device: str, env: dict[str, Any]) -> str:
    return (
        f"**{device}**: {env['device']}, {env['cores']} cores, {env['threads']} torch threads, "
        f"OMP_WAIT_POLICY {env['omp_wait_policy']}, malloc {env.get('malloc', 'glibc default')}; torch {env['torch']}, diffusers {env['diffusers']}, "
        f"Python {env['python']}; 1-min load {env['load_1min_start']:.2f} at start, "
        f"{env.get('load_1min_end', float('nan')):.2f} at end."
    )


def end_to_end_table(rows: list[dict[str, Any]]) -> str:
    header = ["size", "contender", "batch", "s/image", "images/s", "CPU-s/image"]
    header += [f"{s} s/img" for s in STAGE_COLUMNS] + [
        "GFLOP/image",
        "GFLOP/s",
        "% peak",
        "peak MiB",
        "vs diffusers",
    ]
    body = []
    for r in rows:
        stages = r["stage_s_per_image"]
        body.append(
            [
                f"{r['size']}²",
                r["contender"],
                str(r["batch"]),
                f"{r['s_per_image']:.3f}",
                f"{r['images_per_s']:.2f}",
                f"{r['cpu_s_per_image']:.2f}",
            ]
            + [f"{stages[s]:.3f}" if s in stages else "–" for s in STAGE_COLUMNS]
            + [
                f"{r['gflop_per_image']['total']:.1f}",
                f"{r['gflop_per_s']:.1f}",
                f"{100 * r['fraction_of_peak']:.1f}",
                f"{r['peak_mib']:.0f}",
                _x(r["x_diffusers"]),
            ]
        )
    return table(header, body)


def forward_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "network",
        "contender",
        "batch",
        "ms/forward",
        "rows/s",
        "GFLOP/row",
        "GFLOP/s",
        "% peak",
        "vs diffusers",
    ]
    body = [
        [
            r["network"],
            r["contender"],
            str(r["batch"]),
            f"{r['ms_per_forward']:.1f}",
            f"{r['rows_per_s']:.1f}",
            f"{r['gflop_per_row']:.2f}",
            f"{r['gflop_per_s']:.1f}",
            f"{100 * r['fraction_of_peak']:.1f}",
            _x(r["x_diffusers"]),
        ]
        for r in rows
    ]
    return table(header, body)


def markdown_report(results: dict[str, Any]) -> str:
    """Per device: the machine line, the probes, the end-to-end table and the forward table."""
    s = results["sampling"]
    steps = ", ".join(
        f"{k} {v['steps']} steps (guidance {v['guidance']})" for k, v in s.items() if k != "sr1024"
    )
    parts = [f"## Benchmark {results['when']}: config {results['config']}; {steps}"]
    for device, result in results["devices"].items():
        parts.append(environment_line(device, result["environment"]))
        probes = ", ".join(f"{k} {v:.0f}" for k, v in result["probes_gflop_per_s"].items())
        parts.append(f"Peak probes (GFLOP/s): {probes}.")
        if "end_to_end" in result:
            parts.append(f"### End to end ({device})\n\n{end_to_end_table(result['end_to_end'])}")
        if "forward" in result:
            parts.append(f"### One forward at equal FLOPs ({device})\n\n{forward_table(result['forward'])}")
    return "\n\n".join(parts) + "\n"
