"""What ``workers.worker.BatchingWorker`` uses of rq's ``BaseWorker``, checked against the
installed rq (pyproject.toml pins the releases): the hook it overrides, the public methods it
calls with the arguments it passes, and the private members it relies on. A new rq that renames
or reshapes one of them fails here, before a worker fails at run time."""

from __future__ import annotations

import inspect

import pytest
from rq.worker import BaseWorker

from workers.worker import BatchingWorker

# member -> the parameters the worker passes (by name or position, in this order)
CALLED: dict[str, tuple[str, ...]] = {
    "prepare_execution": ("job",),
    "prepare_job_execution": ("job", "remove_from_intermediate_queue"),
    "cleanup_execution": ("job", "pipeline", "execution"),
    "maintain_heartbeats": ("job", "execution"),
    "set_state": ("state",),
    # private: the success and failure paths rq's own perform_job ends with
    "_finalize_success": ("job", "queue", "execution", "return_value"),
    "_finalize_failure": ("job", "queue", "execution", "exc_info"),
}


@pytest.mark.parametrize("name", sorted(CALLED))
def test_the_rq_methods_the_worker_calls_take_its_arguments(name: str) -> None:
    method = getattr(BaseWorker, name, None)
    assert callable(method), f"rq's BaseWorker has no {name}"
    parameters = list(inspect.signature(method).parameters)[1:]  # without self
    assert tuple(parameters[: len(CALLED[name])]) == CALLED[name], parameters


def test_execute_job_is_the_hook_the_worker_overrides() -> None:
    hook = inspect.signature(BaseWorker.execute_job)
    ours = inspect.signature(BatchingWorker.execute_job)
    assert list(hook.parameters) == list(ours.parameters) == ["self", "job", "queue"]


def test_the_rq_attributes_the_worker_uses_exist() -> None:
    source = inspect.getsource(BaseWorker.__init__)
    for attribute in ("self.executions", "self._stop_requested"):
        assert attribute in source, f"BaseWorker.__init__ no longer sets {attribute}"
    assert hasattr(BaseWorker, "death_penalty_class")
