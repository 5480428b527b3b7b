"""KV caches kept between the calls of a multi-step episode, so a step prefills only what its prompt appended.

An agent episode (a ReAct step per call), a RISE episode (a turn per call) and the sequential multi-turn
evaluation call the sampler again and again with a prompt that extends the previous one: the previous
prompt, the model's answer, then an observation or feedback. Re-encoding the whole conversation each time
made prefill the bulk of a rollout. With a key per episode (``HFSampler.complete(cache_keys=...)``), every
finished row's cache — the keys and values of all positions the model computed, prompt and generated tokens,
padding removed — is kept under its key (:class:`PrefixStore`), and the key's next prompt continues the
row it shares the longest token prefix with: only the tokens after that prefix are prefilled
(:func:`selfplay.core.decoding.prefill`). Token ids are compared, never texts, so an answer re-tokenized
differently at a boundary, or a prompt that dropped old turns (a context window), just reuses less.

The reused keys and values are the ones the model computed for the same tokens at the same positions, so
samples are the same as with a full prefill up to floating-point rounding (fp32 greedy agent and RISE
episodes are token-identical in the tests).

Memory: the kept rows of all keys stay within ``budget`` bytes (the sampler's KV budget,
:func:`selfplay.core.memory.kv_cache_budget`); beyond it the oldest keys' rows are dropped first (their next
step prefills its whole prompt, as without a cache). A key's rows are taken out of the store when its next
prompt is decoded, and :meth:`PrefixStore.release` drops them when the episode ends.

Shapes: KVH = key/value heads, L = cached positions, D = head size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import torch


@dataclass
class CachedRow:
    """One finished row: the token ids whose keys and values are cached (its prompt and every generated
    token but the last, which was never fed), and per layer (keys, values) [KVH, L, D]."""

    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixStore:
    """Cached rows per episode key, oldest key first, within ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._rows: OrderedDict[Hashable, list[CachedRow]] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def take(self, key: Hashable, ids: list[int]) -> tuple[CachedRow, int] | None:
        """Remove ``key``'s rows; return the one sharing the longest prefix with ``ids`` and how many of its
        positions to reuse (fewer than ``len(ids)``: the prompt's last token is fed again, its logits start
        the sample), or None when nothing is shared."""
        rows = self._rows.pop(key, None)
        if not rows:
            return None
        self.nbytes -= sum(r.nbytes for r in rows)
        best = max(rows, key=lambda r: common_prefix(r.tokens, ids))
        reuse = min(common_prefix(best.tokens, ids), len(ids) - 1)
        return (best, reuse) if reuse > 0 else None

    def put(self, key: Hashable, rows: list[CachedRow]) -> None:
        """Keep ``rows`` as ``key``'s (replacing any), then drop the oldest keys while over the budget (a key
        whose rows alone exceed it is not kept)."""
        self.release([key])
        self._rows[key] = rows
        self.nbytes += sum(r.nbytes for r in rows)
        while self.nbytes > self.budget and self._rows:
            _, dropped = self._rows.popitem(last=False)
            self.nbytes -= sum(r.nbytes for r in dropped)

    def release(self, keys: Iterable[Hashable]) -> None:
        """Drop the rows of ``keys`` now (an episode ended)."""
        for key in keys:
            rows = self._rows.pop(key, None)
            if rows:
                self.nbytes -= sum(r.nbytes for r in rows)

    def clear(self) -> None:
        self._rows.clear()
        self.nbytes = 0
