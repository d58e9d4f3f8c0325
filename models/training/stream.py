"""Reproducible streams of training examples, addressed by step.

Step ``k`` always gets the same batch for a given seed, whatever happened before, so a resumed
run reads exactly the data an uninterrupted one would have. The stream is cut into blocks of
``block_batches`` batches; each block reads one seeded stream ``source.examples(size, seed)``
from its start (reopened with a new seed if a finite source runs dry), so finding step ``k``
after a restart re-reads at most one block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any labels (works with every RNG a data source might use)."""
    key = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & 0x7FFFFFFF


def step_generator(seed: int, stage: str, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator for one step's own randomness (timesteps, noise, dropping, crops)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, stage, "step", step))


class ExampleStream:
    """Batches of ``Example`` from a data source, by step index.

    :param source: anything with ``examples(size, seed) -> Iterator[Example]``.
    :param size: the side the examples are rendered / resized to.
    """

    def __init__(
        self, source: Any, size: int, batch_size: int, seed: int, label: str, block_batches: int = 50
    ):
        if batch_size < 1 or block_batches < 1:
            raise ValueError("batch_size and block_batches must be positive")
        self.source = source
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.label = label
        self.block_batches = block_batches
        self._block: int | None = None
        self._next_offset = 0
        self._iterator: Iterator[Any] | None = None
        self._restarts = 0

    def batch(self, step: int) -> list[Any]:
        """The ``batch_size`` examples of step ``step``."""
        block, offset = divmod(step, self.block_batches)
        if block != self._block or offset < self._next_offset:
            self._open(block)
        while self._next_offset < offset:  # finding our place after a resume or a jump
            self._take()
        return self._take()

    def _open(self, block: int) -> None:
        self._block = block
        self._next_offset = 0
        self._restarts = 0
        self._iterator = self._examples()

    def _examples(self) -> Iterator[Any]:
        seed = derive_seed(self.seed, self.label, "block", self._block, self._restarts)
        return iter(self.source.examples(self.size, seed))

    def _take(self) -> list[Any]:
        assert self._iterator is not None
        out: list[Any] = []
        empty_restarts = 0
        while len(out) < self.batch_size:
            try:
                out.append(next(self._iterator))
                empty_restarts = 0
            except StopIteration:
                empty_restarts += 1
                if empty_restarts > 1:
                    raise ValueError(f"data source {self.source!r} yields no examples") from None
                self._restarts += 1
                self._iterator = self._examples()
        self._next_offset += 1
        return out
