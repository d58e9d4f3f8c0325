"""contract.schemas: request bounds, idempotency fingerprints, statuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contract.schemas import MAX_SEED, GenerateRequest, JobStatus


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "x" * 1001},
        {"prompt": "a", "n": 0},
        {"prompt": "a", "n": 11},
        {"prompt": "a", "n": "2"},
        {"prompt": "a", "n": 2.5},
        {"prompt": "a", "size": "128x128"},
        {"prompt": "a", "seed": -1},
        {"prompt": "a", "seed": MAX_SEED + 1},
        {"prompt": "a", "steps": {"decoder": 251}},
        {"prompt": "a", "steps": {"prior": 65}},
        {"prompt": "a", "steps": {"sr256": 0}},
        {"prompt": "a", "steps": {"unknown": 3}},
        {"prompt": "a", "guidance": {"decoder": 20.5}},
        {"prompt": "a", "guidance": {"prior": -0.1}},
        {"prompt": "a", "webhook": "ftp://example.com/hook"},
        {"prompt": "a", "webhook": "not a url"},
        {"prompt": "a", "extra": True},
    ],
)
def test_rejects_out_of_bounds(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(body)


def test_accepts_the_full_range() -> None:
    request = GenerateRequest.model_validate(
        {
            "prompt": "x" * 1000,
            "n": 10,
            "size": "1024x1024",
            "seed": MAX_SEED,
            "steps": {"prior": 64, "decoder": 250, "sr256": 50, "sr1024": 50},
            "guidance": {"prior": 0, "decoder": 20},
            "webhook": "https://example.com/hook",
        }
    )
    assert request.side == 1024 and request.seed == MAX_SEED


def test_fingerprint_matches_equal_requests_only() -> None:
    a = GenerateRequest(prompt="a cat", n=2)
    assert a.fingerprint() == GenerateRequest.model_validate({"n": 2, "prompt": "a cat"}).fingerprint()
    assert a.fingerprint() != GenerateRequest(prompt="a cat", n=3).fingerprint()
    assert a.fingerprint() != GenerateRequest(prompt="a cat", n=2, seed=1).fingerprint()


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.is_terminal()} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    }
    assert JobStatus("queued") is JobStatus.QUEUED
