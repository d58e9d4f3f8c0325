"""A cache of CLIP text encodings: an in-process LRU in front of Redis (shared by all workers).

Keys are ``(model id, normalized prompt)``. Normalization is what CLIP's tokenizer does anyway
(open_clip's ``SimpleTokenizer`` with its default ``lower`` cleaning: collapse whitespace,
strip, lowercase), so two prompts that share a key give the same tokens and the cache never
changes an image; it only turns "A  cat " and "a cat" into one entry. (The tokenizer also
HTML-unescapes, case-sensitively, before lowercasing: prompts that differ only in the case of an
HTML entity name, e.g. ``&AMP;`` vs ``&amp;``, could share an entry. That is the one exception.)
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

from redis import Redis
from redis.exceptions import RedisError

from contract.metrics import WorkerMetrics
from models.clip import TextEncoding

log = logging.getLogger("unclip.worker")

Encoder = Callable[[Sequence[str]], TextEncoding]


def normalize_prompt(prompt: str) -> str:
    return " ".join(prompt.split()).lower()


class TextEncodingCache:
    """``encode(prompts, encoder)``: cached rows where present, one encoder call for the rest."""

    def __init__(
        self,
        connection: Redis | None,
        model_id: str,
        *,
        ttl_s: int,
        lru_size: int,
        metrics: WorkerMetrics | None = None,
    ):
        self.connection = connection
        self.model_id = model_id
        self.ttl_s = ttl_s
        self.lru_size = lru_size
        self.metrics = metrics
        self._lru: OrderedDict[str, TextEncoding] = OrderedDict()

    def key(self, prompt: str) -> str:
        digest = hashlib.sha256(normalize_prompt(prompt).encode()).hexdigest()
        return f"unclip:text:{self.model_id}:{digest}"

    def encode(self, prompts: Sequence[str], encoder: Encoder) -> TextEncoding:
        """One row per prompt, in order."""
        keys = [self.key(p) for p in prompts]
        found = self._lookup(list(dict.fromkeys(keys)))
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        # A prompt repeated within one batch is encoded once: the repeats count as hits.
        self._count(hits=len(keys) - len(missing), misses=len(missing))
        if missing:
            first_prompt = {k: p for k, p in reversed(list(zip(keys, prompts, strict=True)))}
            encoded = encoder([first_prompt[k] for k in missing]).to("cpu")
            fresh = {k: encoded.select([i]) for i, k in enumerate(missing)}
            self._store(fresh)
            found.update(fresh)
        return TextEncoding.cat([found[k] for k in keys])

    def _lookup(self, keys: list[str]) -> dict[str, TextEncoding]:
        found: dict[str, TextEncoding] = {}
        for k in keys:
            if k in self._lru:
                self._lru.move_to_end(k)
                found[k] = self._lru[k]
        remote = [k for k in keys if k not in found]
        if remote and self.connection is not None:
            try:
                values = self.connection.mget(remote)
            except RedisError as exc:
                log.warning("text cache read failed, encoding instead: %s", exc)
                values = [None] * len(remote)
            for k, value in zip(remote, values, strict=True):
                if value is not None:
                    found[k] = TextEncoding.from_bytes(bytes(value))  # type: ignore[arg-type]
                    self._remember(k, found[k])
        return found

    def _store(self, fresh: dict[str, TextEncoding]) -> None:
        for k, encoding in fresh.items():
            self._remember(k, encoding)
        if self.connection is None:
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for k, encoding in fresh.items():
                    pipe.set(k, encoding.to_bytes(), ex=self.ttl_s)
                pipe.execute()
        except RedisError as exc:
            log.warning("text cache write failed: %s", exc)

    def _remember(self, key: str, encoding: TextEncoding) -> None:
        if self.lru_size <= 0:
            return
        self._lru[key] = encoding
        self._lru.move_to_end(key)
        while len(self._lru) > self.lru_size:
            self._lru.popitem(last=False)

    def _count(self, hits: int, misses: int) -> None:
        if self.metrics is not None:
            self.metrics.text_cache_hits.inc(hits)
            self.metrics.text_cache_misses.inc(misses)
