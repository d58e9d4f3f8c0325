"""Per-row random streams: a request's seed gives the same sample whatever batch it is in.

A batch mixes requests; if its noise came from one generator, a request's numbers would depend
on its row and on its neighbours. Here row i has its own CPU ``torch.Generator`` seeded with the
request's seed, and every stochastic draw of a sampler (x_T and each step's z) takes the next
numbers of each row's own stream. Drawing on the CPU and then moving makes a seed give the same
numbers on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RowNoise:
    """One CPU generator per batch row.

    :param seeds: one seed per row (rows may share a seed; their streams are then equal).
    :param generators: existing generators to use as the rows instead (shared, not copied).
    """

    def __init__(self, seeds: Sequence[int] = (), generators: Sequence[torch.Generator] | None = None):
        if generators is None:
            generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        elif len(seeds):
            raise ValueError("give seeds or generators, not both")
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self,
        row_shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Standard normal [N x *row_shape]; row i is the next draw of generator i.

        Always drawn in float32 on the CPU, then moved to ``device`` and cast to ``dtype``, so the
        numbers a seed gives do not depend on either.
        """
        rows = [torch.randn(tuple(row_shape), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)  # [N x *row_shape]

    def select(self, rows: Sequence[int]) -> RowNoise:
        """The streams of ``rows``, in that order: the same generator objects, so each continues
        where it is (and drawing from the selection advances them here too)."""
        return RowNoise(generators=[self.generators[i] for i in rows])
