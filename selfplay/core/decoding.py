"""A continuous-batching decode loop for transformers causal LMs, written for CPU throughput.

Why not ``model.generate``: it keeps computing rows that already hit EOS until the longest row of the
batch ends, prefills a prompt n times for n samples (``num_return_sequences``), and samples the whole
batch from one global generator, so a sample depends on its batch-mates. This loop

* drops finished rows from the batch and KV cache at every step, and admits waiting prompts into the
  freed rows (their caches are left-padded to a common length and concatenated), so the batch stays full;
* prefills each prompt once and repeats its KV cache for its n samples;
* draws every row's randomness from its own ``random.Random`` (inverse-CDF sampling), seeded by the caller.

Tensor shapes: R = rows being decoded, T = cached positions (left-padded), V = vocabulary.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from selfplay.core.kv_cache import GrowingLayer, cache_kwarg, new_cache

# top-p keeps a shortlist of this many most likely tokens before falling back to a full vocabulary sort.
TOP_P_CANDIDATES = 256


GROUPED_ATTENTION = "selfplay_grouped"


def grouped_query_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Eager attention for grouped-query models without ``repeat_kv``'s copy of the whole KV cache.

    query: [B, H, Q, D]; key, value: [B, KVH, T, D] with H = G * KVH (head h reads kv head h // G);
    attention_mask: additive [B, 1, Q, T]. Returns [B, Q, H, D]. Same math as transformers' eager
    attention (softmax in fp32; no dropout: generation only). Measured on CPU it was the fastest choice
    for decoding through the model's forward in bf16 (vs SDPA and eager) and ties SDPA in fp32; it now
    serves prefill and the models the lean step (:mod:`selfplay.core.fast_decode`) does not cover.
    """
    b, h, q, d = query.shape
    kvh, t = key.shape[1], key.shape[2]
    groups = h // kvh
    scores = torch.matmul(query.reshape(b, kvh, groups * q, d), key.transpose(2, 3)) * scaling  # [B, KVH, G*Q, T]
    if attention_mask is not None:
        scores = (scores.view(b, kvh, groups, q, t) + attention_mask[:, :, None]).view(b, kvh, groups * q, t)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value)  # [B, KVH, G*Q, D]
    return out.view(b, h, q, d).transpose(1, 2).contiguous(), None


def use_grouped_attention(model: Any) -> None:
    """Switch ``model`` to :func:`grouped_query_attention` (registered with transformers once)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_query_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, eager_mask)
    model.set_attn_implementation(GROUPED_ATTENTION)


@dataclass
class Row:
    """One sample being decoded: which prompt it continues, its random stream, its tokens so far, and why
    it ended ("eos", "stop" for a stop text, "length" at max_new_tokens; "" while decoding)."""

    prompt: int
    rng: random.Random
    tokens: list[int] = field(default_factory=list)
    finish: str = ""


@dataclass
class Batch:
    """Rows decoded together. mask: [R, T] (1 = real token); next_pos: [R, 1]; logits: [R, V] float32."""

    cache: Any
    mask: torch.Tensor
    next_pos: torch.Tensor
    logits: torch.Tensor
    rows: list[Row]

    def mergeable(self) -> bool:
        # Sliding-window and other special cache layers keep their own bookkeeping: only plain layers are cut.
        return all(type(layer) in (DynamicLayer, GrowingLayer) for layer in self.cache.layers)

    def left_pad_to(self, width: int) -> None:
        """Grow T to ``width`` with masked (zero) positions on the left."""
        extra = width - self.mask.shape[1]
        if extra > 0:
            for layer in self.cache.layers:
                layer.keys = F.pad(layer.keys, (0, 0, extra, 0))  # [R, H, T, D]: pad dim -2 on the left
                layer.values = F.pad(layer.values, (0, 0, extra, 0))
            self.mask = F.pad(self.mask, (extra, 0))

    def extend(self, other: Batch) -> None:
        """Append ``other``'s rows (both are left-padded to the longer T first)."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.left_pad_to(width)
        other.left_pad_to(width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.mask = torch.cat([self.mask, other.mask])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.logits = torch.cat([self.logits, other.logits])
        self.rows += other.rows

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` and cut leading positions that are padding for every kept row."""
        idx = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos = self.mask[idx], self.next_pos[idx]
        self.rows = [self.rows[i] for i in keep]
        first = int(self.mask.any(dim=0).int().argmax())
        if first > 0 and self.mergeable():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def step(self, model: Any, tokens: torch.Tensor, fast: Callable[..., torch.Tensor] | None = None) -> None:
        """Feed one token per row ([R]) and keep the next-token logits (through ``fast``, the lean step of
        :mod:`selfplay.core.fast_decode`, when given, else the model's forward)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        if fast is not None:
            self.logits = fast(tokens, self.mask, self.next_pos, self.cache).float()
        else:
            out = model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.next_pos,
                        use_cache=True, logits_to_keep=1, **{cache_kwarg(type(model)): self.cache})
            self.logits = out.logits[:, -1].float()
        self.next_pos = self.next_pos + 1


def prefill(model: Any, prompt_ids: list[list[int]], prompts: list[int], n: int, pad_id: int,
            seeds: Callable[[int, int], int]) -> Batch:
    """Run the prompts once (left-padded) and repeat each prompt's cache for its n rows."""
    device = model.device
    width = max(len(prompt_ids[p]) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids = prompt_ids[p]
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        mask[r, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = new_cache(model)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{cache_kwarg(type(model)): cache})
    logits = out.logits[:, -1].float()
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, mask, positions = (t.repeat_interleave(n, 0) for t in (logits, mask, positions))
    rows = [Row(p, random.Random(seeds(p, j))) for p in prompts for j in range(n)]
    return Batch(cache, mask, positions[:, -1:] + 1, logits, rows)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, rngs: list[random.Random]) -> torch.Tensor:
    """Draw one token per row by inverse-CDF sampling with each row's own uniform number.

    logits: [R, V] float32; returns [R] token ids. Temperature 0 is argmax; ``top_p`` < 1 keeps the
    smallest set of most likely tokens whose mass reaches ``top_p`` (same rule as transformers' TopP).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    uniform = torch.tensor([[rng.random()] for rng in rngs], dtype=probs.dtype, device=probs.device)  # [R, 1]
    order = None
    if top_p < 1.0:
        # A full sort of the vocabulary per step is slow on CPU. The nucleus almost always lies within the
        # top few hundred tokens; when the shortlist's mass reaches top_p for every row the result is exact,
        # otherwise fall back to the full sort.
        full, k = probs, min(TOP_P_CANDIDATES, probs.shape[-1])
        probs, order = full.topk(k, dim=-1)
        if k < full.shape[-1] and bool((probs.sum(dim=-1) < top_p).any()):
            probs, order = full.sort(dim=-1, descending=True)
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp(max=probs.shape[-1] - 1)  # [R, 1]
    return (order.gather(-1, picked) if order is not None else picked).squeeze(-1)


def _finish_reason(row: Row, token: int, eos_ids: set[int], max_new_tokens: int,
                   stopped: Callable[[list[int]], bool] | None) -> str:
    """Why ``row`` ends after ``token`` ("" when it goes on)."""
    if token in eos_ids:
        return "eos"
    if stopped is not None and stopped(row.tokens):
        return "stop"
    return "length" if len(row.tokens) >= max_new_tokens else ""


@torch.inference_mode()
def decode(model: Any, prompt_ids: list[list[int]], order: list[int], *, n: int, temperature: float, top_p: float,
           max_new_tokens: int, max_prompts: int, eos_ids: set[int], pad_id: int, seeds: Callable[[int, int], int],
           on_tokens: Callable[[int], None], on_done: Callable[[int, list[Row]], None],
           stopped: Callable[[list[int]], bool] | None = None, lean: bool = True) -> str:
    """Decode n samples of every prompt, admitting prompts in ``order`` while at most ``max_prompts`` run.

    ``seeds(prompt, j)`` seeds row j of a prompt; ``on_done(prompt, rows)`` fires once per prompt when all
    its n rows ended (EOS kept at the end of a row's tokens, ``row.finish`` says why it ended);
    ``stopped(tokens)`` ends a row when its text reached a stop sequence; ``on_tokens(k)`` counts new tokens.
    ``lean``: decode steps through :mod:`selfplay.core.fast_decode` where it supports the model (else, or
    when False, through the model's forward). Returns which step decoded, and why (for logs and benchmarks).
    """
    fast, used = None, "model forward (lean step turned off)"
    if lean:
        from selfplay.core.fast_decode import fast_step_for

        fast, why = fast_step_for(model, max_prompts * n)
        used = why if fast is not None else f"model forward (lean step not used: {why})"
    pending = deque(order)
    rows_of: dict[int, list[Row]] = {}  # every row of each running prompt, finished or not
    unfinished: dict[int, int] = {}  # running prompt -> rows still decoding
    # Admitting costs a prefill call and a cache copy, so wait until a quarter of the batch is free.
    admit_at = max(1, max_prompts // 4)
    batch: Batch | None = None
    while pending or batch is not None:
        free = max_prompts - len(unfinished)
        if pending and (batch is None or (free >= min(admit_at, len(pending)) and batch.mergeable())):
            new = prefill(model, prompt_ids, [pending.popleft() for _ in range(min(free, len(pending)))],
                          n, pad_id, seeds)
            for row in new.rows:
                rows_of.setdefault(row.prompt, []).append(row)
                unfinished[row.prompt] = unfinished.get(row.prompt, 0) + 1
            if batch is None:
                batch = new
            else:
                batch.extend(new)
        tokens = next_tokens(batch.logits, temperature, top_p, [row.rng for row in batch.rows])  # [R]
        keep = []
        for b, (row, tok) in enumerate(zip(batch.rows, tokens.tolist())):
            row.tokens.append(tok)
            row.finish = _finish_reason(row, tok, eos_ids, max_new_tokens, stopped)
            if not row.finish:
                keep.append(b)
                continue
            unfinished[row.prompt] -= 1
            if unfinished[row.prompt] == 0:
                del unfinished[row.prompt]
                on_done(row.prompt, rows_of.pop(row.prompt))
        on_tokens(len(batch.rows))
        if not keep:
            batch = None
            continue
        if len(keep) < len(batch.rows):
            tokens = tokens[torch.tensor(keep, device=tokens.device)]
            batch.keep(keep)
        batch.step(model, tokens, fast)
    return used
