"""Per-stage progress bars for the command line (tqdm on stderr): one bar per stage of the chain,
fed by the pipeline's ``progress(stage, step, total)`` callback."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from tqdm import tqdm


class StageBars:
    """``progress(stage, step, total)`` → a tqdm bar per stage, closed when the next one starts.

    Use as a context manager so the last bar is closed; ``disable`` (e.g. not a terminal) keeps
    the callbacks but draws nothing.
    """

    def __init__(self, disable: bool | None = None, prefix: str = ""):
        self.disable = (not sys.stderr.isatty()) if disable is None else disable
        self.prefix = prefix
        self._bar: tqdm[Any] | None = None
        self._stage: str | None = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=total, desc=f"{self.prefix}{stage:>8}", unit="step", leave=False, disable=self.disable
            )
        assert self._bar is not None
        self._bar.total = total
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None

    def __enter__(self) -> StageBars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
