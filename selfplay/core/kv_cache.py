"""The KV cache the decode loop and the lean decode step share, kept apart from both.

:class:`GrowingLayer` is a transformers cache layer that writes each step in place into buffers with spare
room; :func:`new_cache` builds a cache of them where the model allows it, and :func:`cache_kwarg` names the
forward() keyword that takes a cache in the installed transformers. The generation loop
(:mod:`selfplay.core.decoding`) and the lean decode step (:mod:`selfplay.core.fast_decode`) both import
this module; neither imports the other's internals.

Tensor shapes: B = rows, H = key/value heads, T = cached positions, D = head size.
"""

from __future__ import annotations

import functools
import inspect
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


@functools.lru_cache(maxsize=None)
def cache_kwarg(model_class: type) -> str:
    """The forward() keyword that takes the KV cache: ``cache`` (transformers >= 5.24, which deprecates
    ``past_key_values`` and removes it in 5.40) or ``past_key_values`` (earlier 5.x releases)."""
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
