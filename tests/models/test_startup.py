"""Start-up: what a short `unclip generate` imports (docs/benchmark.md, "Start-up")."""

from __future__ import annotations

import subprocess
import sys


def _fresh(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    ).stdout.strip()


def test_generate_answers_help_without_torch() -> None:
    code = "import sys; from cli.main import build_parser; build_parser('generate'); print('torch' in sys.modules)"
    assert _fresh(code) == "False"


def test_clip_loads_open_clip_without_its_optional_integrations() -> None:
    code = (
        "import sys, models.clip; "
        "print(sorted(m for m in ('timm', 'transformers', 'huggingface_hub') if m in sys.modules))"
    )
    assert _fresh(code) == "[]"


def test_hidden_integrations_stay_importable() -> None:
    code = (
        "import importlib.util, models.clip\n"
        "for name in ('timm', 'transformers', 'huggingface_hub'):\n"
        "    if importlib.util.find_spec(name) is not None:\n"
        "        importlib.import_module(name)\n"
        "print('ok')"
    )
    assert _fresh(code) == "ok"
