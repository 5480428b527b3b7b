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

from selfplay.core.kv_cache import Admission, GrowingLayer, cache_kwarg, new_cache
from selfplay.core.prefix_cache import CachedRow

# top-p keeps a shortlist of this many most likely tokens before falling back to a full vocabulary sort.
TOP_P_CANDIDATES = 256
# Most tokens (rows x padded width) one prefill forward pass takes: its activations (MLP ~12 kB per token in
# bf16 for SmolLM2) stay at a few hundred MB however many prompts are admitted at once.
PREFILL_TOKENS = 8192
# Default bound on the KV cache of one decode call (cache_bytes): admission stops before it would pass it.
DEFAULT_CACHE_BYTES = 1 << 30


GROUPED_ATTENTION = "selfplay_grouped"


def grouped_query_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention for grouped-query models without ``repeat_kv``'s copy of the whole KV cache.

    query: [B, H, Q, D]; key, value: [B, KVH, T, D] with H = G * KVH (head h reads kv head h // G);
    attention_mask: additive [B, 1, Q, T]. Returns [B, Q, H, D]. No dropout: generation only. It serves the
    models the lean step (:mod:`selfplay.core.fast_decode`) does not cover, and is the lean step's
    yardstick in bf16 (the same op on the same inputs).
    """
    b, h, q, d = query.shape
    kvh = key.shape[1]
    if q > 1:
        # Prefill: the fused kernel never materialises the [B, H, Q, T] scores (two fp32 copies of them in a
        # matmul path: 4.6 GB for 16 agent prompts of 2,000 tokens). The mask is additive and
        # finite, so a left-padding query that may attend nothing gets a uniform average, never NaN.
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                             enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    # One query: each kv head's G query heads are the G queries of one SDPA call (they share the [B, 1, 1, T]
    # mask), as the lean decode step attends (selfplay.core.fast_decode: same op, same numbers).
    out = F.scaled_dot_product_attention(query.reshape(b, kvh, h // kvh, d), key, value, attn_mask=attention_mask,
                                         scale=scaling)  # [B, KVH, G, D]
    return out.reshape(b, 1, h, d), None


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

    def extend(self, *others: Batch) -> None:
        """Append the rows of ``others`` (all left-padded to the longest T). Each cache layer is copied once,
        into buffers with room to grow (a second copy would follow at the next step otherwise)."""
        batches = (self, *others)
        width = max(b.mask.shape[1] for b in batches)
        for i, mine in enumerate(self.cache.layers):
            parts = [(b.cache.layers[i].keys, b.cache.layers[i].values) for b in batches]
            for b in others:  # freed as soon as they are copied
                b.cache.layers[i].keys = b.cache.layers[i].values = None
            _concat_rows(mine, parts, width)
        self.mask = torch.cat([F.pad(b.mask, (width - b.mask.shape[1], 0)) for b in batches])
        self.next_pos = torch.cat([b.next_pos for b in batches])
        self.logits = torch.cat([b.logits for b in batches])
        self.rows = [row for b in batches for row in b.rows]

    def keep(self, keep: list[int]) -> list[int]:
        """Keep only rows ``keep`` (ascending); returns the old index of each row now in the batch.

        With growing cache layers the survivors beyond the new row count move into the freed slots and the
        buffers shrink as views: a step where rows finish copies only the moved rows' caches, not the whole
        cache (twice: a selection, then a new buffer), which at 64-128 rows cost more than the step itself.
        Leading positions that are padding for every kept row are cut when they are a quarter of the cache.
        """
        kept = set(keep)
        movers = iter(j for j in keep if j >= len(keep))
        order = [i if i in kept else next(movers) for i in range(len(keep))]
        if all(_growing(layer) for layer in self.cache.layers):
            holes = [i for i, j in enumerate(order) if i != j]
            for layer in self.cache.layers:
                _move_rows(layer, holes, [order[i] for i in holes], len(keep))
        else:
            self.cache.batch_select_indices(torch.tensor(order, device=self.mask.device))
        idx = torch.tensor(order, device=self.mask.device)
        self.mask, self.next_pos = self.mask[idx], self.next_pos[idx]  # logits: the next step replaces them
        self.rows = [self.rows[i] for i in order]
        first = int(self.mask.any(dim=0).int().argmax())
        if first > 0 and first >= self.mask.shape[1] // 4 and self.mergeable():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]
        return order

    def step(self, model: Any, tokens: torch.Tensor, fast: Callable[..., torch.Tensor] | None = None) -> None:
        """Feed one token per row ([R]) and keep the next-token logits (through ``fast``, the lean step of
        :mod:`selfplay.core.fast_decode`, when given, else the model's forward)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        if fast is not None:
            self.logits = fast(tokens, self.mask, self.next_pos, self.cache).float()
        else:
            out = model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.next_pos,
                        use_cache=True, logits_to_keep=1, **{cache_kwarg(model): self.cache})
            self.logits = out.logits[:, -1].float()
        self.next_pos = self.next_pos + 1


def _growing(layer: Any) -> bool:
    """A GrowingLayer whose keys/values are still views of its own buffers."""
    buffers = getattr(layer, "_buffers", None)
    return (type(layer) is GrowingLayer and buffers is not None and layer.keys.data_ptr() == buffers[0].data_ptr()
            and layer.values.data_ptr() == buffers[1].data_ptr())


def _concat_rows(layer: Any, parts: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> None:
    """Set ``layer``'s keys/values [R, H, width, D] to ``parts`` stacked along rows, each left-padded with
    zeros to ``width`` (masked positions must still be finite: SDPA multiplies them by a zero weight). A
    GrowingLayer gets buffers with its spare room, so its next update writes in place."""
    k0 = parts[0][0]
    rows = sum(k.shape[0] for k, _ in parts)
    room = width + (GrowingLayer.spare if type(layer) is GrowingLayer else 0)
    keys = k0.new_empty((rows, k0.shape[1], room, k0.shape[3]))  # [R, H, room, D]
    values = parts[0][1].new_empty((rows, parts[0][1].shape[1], room, parts[0][1].shape[3]))
    r = 0
    for k, v in parts:
        n, t = k.shape[0], k.shape[2]
        for buffer, part in ((keys, k), (values, v)):
            buffer[r:r + n, :, :width - t].zero_()
            buffer[r:r + n, :, width - t:width].copy_(part)
        r += n
    layer.keys, layer.values = keys[:, :, :width], values[:, :, :width]
    if type(layer) is GrowingLayer:
        layer._buffers = (keys, values)


def _move_rows(layer: Any, to: list[int], source: list[int], rows: int) -> None:
    """Copy the cache rows ``source`` into rows ``to`` of a growing layer's buffers, then keep the first
    ``rows`` rows (views: the buffers stay, their tail rows become unreachable)."""
    keys, values = layer._buffers
    if to:
        dest, src = torch.tensor(to, device=keys.device), torch.tensor(source, device=keys.device)
        keys.index_copy_(0, dest, keys.index_select(0, src))
        values.index_copy_(0, dest, values.index_select(0, src))
    t = layer.keys.shape[-2]
    layer._buffers = (keys[:rows], values[:rows])
    layer.keys, layer.values = layer._buffers[0][:, :, :t], layer._buffers[1][:, :, :t]


def prefill(model: Any, prompt_ids: list[list[int]], prompts: list[int], n: int, pad_id: int,
            seeds: Callable[[int, int], int], max_tokens: int | None = None,
            prefixes: dict[int, tuple[CachedRow, int]] | None = None) -> Batch:
    """Run the prompts once (left-padded) and repeat each prompt's cache for its n rows.

    ``prefixes`` maps a prompt to a cached row (:mod:`selfplay.core.prefix_cache`) and how many of its leading
    positions are this prompt's first tokens: those are not run again, only the rest of the prompt is, on
    top of them. The prompts go through the model in groups of at most ``max_tokens`` new tokens (rows x
    padded width; default :data:`PREFILL_TOKENS`), prompts that continue a cached row apart from the others,
    so a prefill's activations stay bounded however many long prompts are admitted at once; a single longer
    prompt is one group. Rows follow the prompts' order, those continuing a cached row last.
    """
    budget, prefixes = max_tokens or PREFILL_TOKENS, prefixes or {}
    groups: list[list[int]] = []
    for cached in (False, True):
        group: list[int] = []
        for p in (q for q in prompts if (q in prefixes) == cached):
            width = max(len(prompt_ids[q]) - (prefixes[q][1] if cached else 0) for q in group + [p])
            if group and (len(group) + 1) * width > budget:
                groups.append(group)
                group = []
            group.append(p)
        if group:
            groups.append(group)
    parts = [_prefill_group(model, prompt_ids, group, n, pad_id, seeds, prefixes) for group in groups]
    if len(parts) > 1:
        parts[0].extend(*parts[1:])
    return parts[0]


def _prefill_group(model: Any, prompt_ids: list[list[int]], prompts: list[int], n: int, pad_id: int,
                   seeds: Callable[[int, int], int], prefixes: dict[int, tuple[CachedRow, int]]) -> Batch:
    """One forward pass: each prompt's tokens after its reused prefix (all of them without one), right-aligned
    after ``past`` cached positions (each row's prefix right-aligned in them, zeros before)."""
    device = model.device
    reused = [prefixes[p][1] if p in prefixes else 0 for p in prompts]
    past = max(reused)
    width = max(len(prompt_ids[p]) - m for p, m in zip(prompts, reused))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), past + width), dtype=torch.long)
    positions = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, (p, m) in enumerate(zip(prompts, reused)):
        ids = prompt_ids[p][m:]
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        mask[r, past - m:past] = 1
        mask[r, past + width - len(ids):] = 1
        positions[r, width - len(ids):] = torch.arange(m, m + len(ids))
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    cache = new_cache(model)
    if past:
        for i, layer in enumerate(cache.layers):
            parts = [(prefixes[p][0].layers[i][0][None, :, :m], prefixes[p][0].layers[i][1][None, :, :m])
                     for p, m in zip(prompts, reused)]  # [1, KVH, m, D] each (m may be 0)
            layer.lazy_initialization(*parts[0])
            _concat_rows(layer, [(k.to(device), v.to(device)) for k, v in parts], past)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{cache_kwarg(model): cache})
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
           stopped: Callable[[list[int]], bool] | None = None, lean: bool = True,
           cache_bytes: int = DEFAULT_CACHE_BYTES, prefixes: dict[int, tuple[CachedRow, int]] | None = None,
           on_cache: Callable[[Row, list[tuple[torch.Tensor, torch.Tensor]]], None] | None = None) -> str:
    """Decode n samples of every prompt, admitting prompts in ``order`` while at most ``max_prompts`` run and
    their KV cache can stay within ``cache_bytes`` (see :class:`Admission`).

    ``prefixes``: cached rows some prompts continue (see :func:`prefill`; an entry is dropped once its prompt
    is prefilled). ``on_cache(row, layers)``: given, it receives each row's cache as the row ends (per layer
    keys and values [KVH, L, D] of its L real positions: its prompt and its tokens but the last), before
    ``on_done`` fires for its prompt.

    ``seeds(prompt, j)`` seeds row j of a prompt; ``on_done(prompt, rows)`` fires once per prompt when all
    its n rows ended (EOS kept at the end of a row's tokens, ``row.finish`` says why it ended);
    ``stopped(tokens)`` ends a row when its text reached a stop sequence; ``on_tokens(k)`` counts new tokens.
    ``lean``: decode steps through :mod:`selfplay.core.fast_decode` where it supports the model (else, or
    when False, through the model's forward). Returns which step decoded, and why (for logs and benchmarks).
    A finished row leaves the batch, and its cache with it, at the step it ends.
    """
    fast, used = None, "model forward (lean step turned off)"
    if lean:
        from selfplay.core.fast_decode import fast_step_for

        fast, why = fast_step_for(model, max_prompts * n)
        used = why if fast is not None else f"model forward (lean step not used: {why})"
    pending = deque(order)
    rows_of: dict[int, list[Row]] = {}  # every row of each running prompt, finished or not
    unfinished: dict[int, int] = {}  # running prompt -> rows still decoding
    admission = Admission(model, prompt_ids, n=n, max_new_tokens=max_new_tokens, max_prompts=max_prompts,
                          cache_bytes=cache_bytes)
    batch: Batch | None = None
    while pending or batch is not None:
        admit = admission.count(pending, len(unfinished), len(batch.rows) if batch else 0,
                                batch.mask.shape[1] if batch else 0) if pending else 0
        if admit and (batch is None or batch.mergeable()):
            admitted = [pending.popleft() for _ in range(admit)]
            new = prefill(model, prompt_ids, admitted, n, pad_id, seeds, prefixes=prefixes)
            for p in admitted:
                (prefixes or {}).pop(p, None)  # its cached row is in the batch now: free it
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
            if on_cache is not None:
                real = batch.mask[b].nonzero().squeeze(-1)  # this row's positions: padding left out
                on_cache(row, [(layer.keys[b].index_select(1, real), layer.values[b].index_select(1, real))
                               for layer in batch.cache.layers])
            unfinished[row.prompt] -= 1
            if unfinished[row.prompt] == 0:
                del unfinished[row.prompt]
                on_done(row.prompt, rows_of.pop(row.prompt))
        on_tokens(len(batch.rows))
        if not keep:
            batch = None
            continue
        if len(keep) < len(batch.rows):
            tokens = tokens[torch.tensor(batch.keep(keep), device=tokens.device)]
        batch.step(model, tokens, fast)
    return used
