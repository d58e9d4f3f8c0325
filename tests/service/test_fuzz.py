"""A small schemathesis run in the suite (scripts/fuzz_api.py with few examples): generated
requests for every operation of the OpenAPI schema, through uvicorn, a real Redis and an API
key. No 5xx, and every answer conforms to the schema. The full run has over 1,000 cases."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workers.harness import REPO


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/fuzz_api.py", "--max-examples", "10"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "passed" in result.stdout.lower(), result.stdout[-3000:]
