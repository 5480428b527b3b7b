"""The KV cache the decode loop and the lean decode step share, kept apart from both.

:class:`GrowingLayer` is a transformers cache layer that writes each step in place into buffers with spare
room; :func:`new_cache` builds a cache of them where the model allows it, and :func:`cache_kwarg` names the
forward() keyword that takes a cache in the installed transformers. The generation loop
(:mod:`selfplay.core.decoding`) and the lean decode step (:mod:`selfplay.core.fast_decode`) both import
this module; neither imports the other's internals. :class:`Admission` bounds how much cache a decode call
may hold (:func:`kv_bytes_per_token` per token and row).

Tensor shapes: B = rows, H = key/value heads, T = cached positions, D = head size.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A KV cache layer whose ``keys``/``values`` [B, H, T, D] are views into buffers with spare room along T.

    transformers' DynamicLayer appends with ``torch.cat``, copying the whole cache every step (a fifth of a
    decode step on CPU at T≈300). Here a step writes in place; the buffers are remade (one copy) only when
    full or after batch surgery replaced ``keys`` with a new tensor. Keys keep the [B, H, T, D] layout:
    a step's write is then one contiguous row per head (a transposed layout made it a scattered column
    write, ~1.4 ms of a 36 ms step), and SDPA reads the views without copying them.
    """

    spare = 64  # positions of room added whenever a buffer is (re)made

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        new = old + key_states.shape[-2]
        buffers = getattr(self, "_buffers", None)
        if (buffers is None or buffers[1].shape[0] != key_states.shape[0] or buffers[1].shape[-2] < new
                or self.keys.data_ptr() != buffers[0].data_ptr() or self.values.data_ptr() != buffers[1].data_ptr()):
            b, h, _, d = key_states.shape
            keys = key_states.new_empty((b, h, new + self.spare, d))  # [B, H, room, D]
            values = value_states.new_empty((b, h, new + self.spare, d))
            if old:
                keys[:, :, :old] = self.keys
                values[:, :, :old] = self.values
            buffers = self._buffers = (keys, values)
        buffers[0][:, :, old:new] = key_states
        buffers[1][:, :, old:new] = value_states
        self.keys, self.values = buffers[0][:, :, :new], buffers[1][:, :, :new]
        return self.keys, self.values


def cache_kwarg(model: Any) -> str:
    """The forward() keyword that takes ``model``'s KV cache: ``cache`` (transformers >= 5.24, which deprecates
    ``past_key_values`` and removes it in 5.40) or ``past_key_values`` (earlier 5.x releases). A PEFT model
    passes the keyword through to its base model, whose signature decides (PEFT's own forward names neither)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of(type(base))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: Any) -> Any:
    """A DynamicCache for ``model``, with :class:`GrowingLayer` on CPU when every layer is plain full attention."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    # CPU only: on GPUs the cat is cheap and SDPA kernels prefer contiguous keys.
    if model.device.type == "cpu" and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token of one row takes in ``model`` (keys and values of every layer)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


class Admission:
    """How many waiting prompts may join the batch: at most ``max_prompts`` running, and the KV cache the batch
    could reach (rows x (width + max_new_tokens), width = the longest row's positions) within ``cache_bytes``.
    Admitting costs a prefill call and a copy of the cache, so prompts join in groups: once a quarter of what
    fits is free (or every waiting prompt fits). A prompt always runs when nothing else does, whatever its size.
    The bound holds up to the left padding a batch keeps (under a quarter of its positions, see
    :meth:`selfplay.core.decoding.Batch.keep`) and the growing buffers' spare room.
    """

    def __init__(self, model: Any, prompt_ids: list[list[int]], *, n: int, max_new_tokens: int, max_prompts: int,
                 cache_bytes: int) -> None:
        self.prompt_ids, self.n, self.max_new_tokens, self.max_prompts = prompt_ids, n, max_new_tokens, max_prompts
        self.cache_bytes, self.token_bytes = cache_bytes, kv_bytes_per_token(model)
        longest = max((len(ids) for ids in prompt_ids), default=1)
        fits = max(1, cache_bytes // max(1, n * (longest + max_new_tokens) * self.token_bytes))
        self.group = max(1, min(max_prompts, fits) // 4)

    def count(self, pending: Iterable[int], running: int, rows: int, width: int) -> int:
        """How many prompts from the head of ``pending`` to admit now (0: wait for rows to finish), with
        ``running`` prompts in ``rows`` rows of ``width`` cached positions decoding (0 rows: nothing runs)."""
        pending = list(pending)
        k = 0
        for p in pending:
            if running + k >= self.max_prompts:
                break
            width = max(width, len(self.prompt_ids[p]))
            grown = (rows + (k + 1) * self.n) * (width + self.max_new_tokens) * self.token_bytes
            if grown > self.cache_bytes and (k or rows):
                break
            k += 1
        if rows and k < min(self.group, len(pending)):
            return 0
        return k
