"""Per-row random streams: a request's seed gives the same sample whatever batch it is in."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RowNoise:
    """One CPU generator per batch row; every stochastic draw of a sampler comes from here.

    Rows are drawn on the CPU and then moved, so a seed gives the same numbers on every device.
    """

    def __init__(self, seeds: Sequence[int] = (), generators: Sequence[torch.Generator] | None = None):
        if generators is None:
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self,
        row_shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """[N x *row_shape] standard normal, row i from generator i."""
        rows = [torch.randn(row_shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def select(self, rows: Sequence[int]) -> RowNoise:
        """The streams of ``rows`` (shared, so they continue where they are)."""
        return RowNoise(generators=[self.generators[i] for i in rows])
