"""A lean one-token decode step for Llama-style models on CPU, used by :mod:`selfplay.core.decoding`.

Why not the model's own ``forward`` for each decode step: at 16 rows a step of a 135M model spends less
than half its time in matmuls; the rest is per-op and per-module overhead (hundreds of small ops, kwargs
plumbing, mask building, dtype round trips) that transformers' general forward pays on every step. This
step computes the same layers with

* q/k/v and gate/up fused into one matmul each, with weights prepacked for oneDNN (``mkldnn`` blocked
  layout, the same prepacking ``torch.compile``'s freezing pass and IPEX do for CPU linears);
* one rotary call on q and k together, one additive mask per step;
* attention through PyTorch's fused SDPA kernel with each kv head's query heads as its queries (grouped heads
  without copying the KV cache; :meth:`FastStep._attend`) on :class:`~selfplay.core.kv_cache.GrowingLayer`'s
  in-place cache.

Prefill (many tokens per row, compute bound) stays with the model's forward; both write the same cache.
It is used only where the architecture is known to be exactly this computation (``SUPPORTED`` and the
structural checks in :func:`unsupported_reason`) and after one check that its logits agree with the model's
forward (:func:`fast_step_for`); otherwise decoding falls back to ``model(...)``. The packed weights are a
second copy of the linear weights, made only when memory allows and remade whenever the model's weights
change (a model trained in place between calls is never decoded with stale weights).

Shapes: R = rows, T = cached positions, E = hidden size, H / KVH = query / key-value heads, G = H // KVH,
Dh = head size, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from selfplay.core.kv_cache import GrowingLayer, cache_kwarg, new_cache
from selfplay.core.memory import available_bytes

# model_type values whose decoder layer is RMSNorm -> q/k/v (+bias) -> RoPE -> attention -> o -> RMSNorm ->
# SwiGLU MLP, with a final RMSNorm and a linear head (SmolLM2 is "llama").
SUPPORTED = ("llama", "mistral", "qwen2")
# The least |fast - forward| logit difference the one-time check accepts, relative to max(1, max |logit|)
# (it accepts more where the forward's own attention implementations differ by more; see
# _agrees_with_forward): fused/prepacked matmuls may round differently in the last bit.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


# _pack and _linear call PyTorch's own oneDNN ops (the ones torch.compile emits for frozen CPU linears). They
# are internal: should a release rename them, building the step fails and decoding falls back to forward().
def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` [out, in] in oneDNN's blocked layout for ``rows``-row inputs (used by :func:`_linear`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [R, in] @ packed^T (+ bias) -> [R, out]."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@dataclass
class _Layer:
    norm_in: torch.Tensor  # [E]
    norm_post: torch.Tensor  # [E]
    eps_in: float
    eps_post: float
    qkv: torch.Tensor  # packed [(H + 2 KVH) Dh, E]
    qkv_bias: torch.Tensor | None  # [(H + 2 KVH) Dh]
    o: torch.Tensor  # packed [E, H Dh]
    gate_up: torch.Tensor  # packed [2 I, E]
    down: torch.Tensor  # packed [E, I]
    scaling: float


def unsupported_reason(model: Any) -> str | None:
    """Why the lean step cannot run ``model`` (None when it can)."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED:
        return f"model type {cfg.model_type!r} is not one of {', '.join(SUPPORTED)}"
    if model.device.type != "cpu" or model.dtype not in TOLERANCE:
        return f"runs only on CPU in float32/bfloat16 (model: {model.device.type}, {model.dtype})"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if model.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "oneDNN has no bf16 kernels for this CPU"
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return "MLP is not a bias-free SwiGLU"
    if any(kind != "full_attention" for kind in (getattr(cfg, "layer_types", None) or [])):
        return "some layers use sliding-window attention"
    if not all(type(layer) is GrowingLayer for layer in new_cache(model).layers):
        return "its KV cache has special (e.g. sliding-window) layers"
    for layer in model.model.layers:
        attn = layer.self_attn
        if hasattr(attn, "q_norm") or attn.o_proj.bias is not None:
            return "attention has q/k norms or an output bias"
    return None


class FastStep:
    """The lean decode step for one model: ``step(tokens, mask, positions, cache)`` -> logits [R, V]."""

    def __init__(self, model: Any, rows: int) -> None:
        cfg, inner = model.config, model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = inner.layers[0].self_attn.head_dim
        self.intermediate = cfg.intermediate_size
        self.embed, self.rotary = inner.embed_tokens, inner.rotary_emb
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = _pack(model.lm_head.weight, rows)
        self.head_bias = model.lm_head.bias
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            self.layers.append(_Layer(
                norm_in=layer.input_layernorm.weight, norm_post=layer.post_attention_layernorm.weight,
                eps_in=layer.input_layernorm.variance_epsilon, eps_post=layer.post_attention_layernorm.variance_epsilon,
                qkv=_pack(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), rows),
                qkv_bias=None if biases[0] is None else torch.cat(biases).detach(),
                o=_pack(attn.o_proj.weight, rows),
                gate_up=_pack(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), rows),
                down=_pack(mlp.down_proj.weight, rows), scaling=attn.scaling))

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """transformers' RMSNorm (normalize in float32, round to the input dtype, then scale) in three
        full-size ops instead of seven: the sum of squares accumulates in float32 inside ``vector_norm``, and
        ``mul(..., out=)`` multiplies in float32 and rounds once, as ``.to(dtype)`` does. x: [R, E]."""
        inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # [R, 1]
        inv = inv.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        return torch.mul(x, inv, out=torch.empty_like(x)).mul_(weight)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding as transformers' ``apply_rotary_pos_emb``. x: [R, heads, Dh]; cos, sin: [R, 1, Dh]."""
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                scaling: float) -> torch.Tensor:
        """One query per row over the cache, as :func:`~selfplay.core.decoding.grouped_query_attention` computes
        it: q [R, H, Dh], keys/values [R, KVH, T, Dh] (views into the cache's buffers, which have room to grow),
        mask additive [R, 1, 1, T] -> [R, H Dh]. PyTorch's fused SDPA kernel with each kv head's G query heads
        as its G queries (they share the mask): on the cache's strided views it took 0.4-0.5x the time of two
        batched matmuls in bf16 (which copy the views first; 16-48 rows, 150-300 positions, 1-2 threads) and
        0.9-1.0x in fp32. (Its one-query-per-head form with enable_gqa had measured 5-6x slower in bf16.)"""
        r, h, d = q.shape
        kvh = keys.shape[1]
        out = F.scaled_dot_product_attention(q.view(r, kvh, h // kvh, d), keys, values, attn_mask=mask, scale=scaling)
        return out.reshape(r, h * d)  # [R, KVH, G, Dh] -> [R, H Dh]

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """tokens: [R]; mask: [R, T] (1 = real, including this step's position); positions: [R, 1];
        cache: a DynamicCache of GrowingLayers holding T - 1 positions. Returns logits [R, V]."""
        rows, h, kvh, d = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        x = self.embed(tokens)  # [R, E]
        cos, sin = self.rotary(x, positions)  # [R, 1, Dh]
        # Additive, as the model's eager mask: 0 where a row attends, the dtype's lowest value elsewhere.
        additive = torch.zeros(mask.shape, dtype=x.dtype).masked_fill_(mask == 0, torch.finfo(x.dtype).min)
        additive = additive[:, None, None, :]  # [R, 1, 1, T]
        for weights, layer in zip(self.layers, cache.layers):
            qkv = _linear(self._rms(x, weights.norm_in, weights.eps_in), weights.qkv, weights.qkv_bias)
            qk = self._rope(qkv[:, :(h + kvh) * d].view(rows, h + kvh, d), cos, sin)  # [R, H + KVH, Dh]
            keys, values = layer.update(qk[:, h:, None], qkv[:, (h + kvh) * d:].view(rows, kvh, 1, d))  # [R, KVH, T, Dh]
            attended = self._attend(qk[:, :h], keys, values, additive, weights.scaling)  # [R, H Dh]
            x = x + _linear(attended, weights.o)
            gate_up = _linear(self._rms(x, weights.norm_post, weights.eps_post), weights.gate_up)
            x = x + _linear(F.silu(gate_up[:, :self.intermediate]) * gate_up[:, self.intermediate:], weights.down)
        return _linear(self._rms(x, self.norm, self.norm_eps), self.head, self.head_bias)


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max(1, max |a|)."""
    return float((a - b).abs().max() / max(1.0, float(a.abs().max())))


def step_logits(model: Any, attention: str, step: FastStep | None = None) -> torch.Tensor:
    """Logits [2, V] of one decode step after a prefill of a small synthetic batch (one row left-padded),
    through ``step`` if given else the model's forward, with ``attention`` set meanwhile (then restored)."""
    vocab = model.config.vocab_size
    ids = (torch.arange(12).view(2, 6) * 7919 + 11) % vocab  # [2, 6]: any token ids
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tokens, step_mask, step_pos = ids[:, -1], F.pad(mask, (0, 1), value=1), positions[:, -1:] + 1
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(attention)
        cache = new_cache(model)
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
              **{cache_kwarg(model): cache})
        if step is not None:
            return step(tokens, step_mask, step_pos, cache).float()
        return model(input_ids=tokens[:, None], attention_mask=step_mask, position_ids=step_pos, use_cache=True,
                     logits_to_keep=1, **{cache_kwarg(model): cache}).logits[:, -1].float()
    finally:
        model.set_attn_implementation(previous)


def _agrees_with_forward(model: Any, step: FastStep) -> str | None:
    """The lean step's mismatch with the model's forward on one decode step (None when they agree).

    The yardstick is the forward's own rounding: the lean step (which attends with SDPA) may differ from
    the SDPA forward by at most twice what the SDPA and eager forwards differ by, or ``TOLERANCE`` where that
    is larger. In bf16 two correct forwards differ by a few percent of the largest logit (more after
    training: a fixed bf16 threshold rejected iteration 1 of the quickstart); a wrong step (e.g. without
    the rotary embedding) differs by far more.
    """
    sdpa = step_logits(model, "sdpa")
    allowed = max(TOLERANCE[model.dtype], 2 * _relative_gap(sdpa, step_logits(model, "eager")))
    worst = _relative_gap(sdpa, step_logits(model, "sdpa", step))
    return None if worst <= allowed else (f"logits differ from the model's forward by {worst:.2g} (relative; "
                                          f"allowed {allowed:.2g})")


def _memory_shortfall(model: Any) -> str | None:
    """Why there is no room for the packed copy of the weights (None when there is)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    free = available_bytes()
    if free is not None and free < 2 * weight_bytes:
        return f"not enough free memory for a packed copy of the weights ({weight_bytes / 2**30:.1f} GiB)"
    return None


def _weights_signature(model: Any) -> tuple[tuple[int, int], ...]:
    """Where each parameter lives and its in-place version counter: changes when anything (an optimizer
    step, ``load_state_dict``, a weight swap) writes new weights, so packed copies are never stale."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def fast_step_for(model: Any, rows: int) -> tuple[FastStep | None, str]:
    """The lean step for ``model`` at about ``rows`` rows, or None and why it is not used.

    Built and checked once per model and kept on it (samplers call ``decode`` once per batch of prompts,
    agents once per ReAct step) until its weights change.
    """
    signature = _weights_signature(model)
    cached = getattr(model, "_selfplay_fast_step", None)
    if cached is not None and cached[0] == signature:  # ``rows`` only tunes the packed layout: reuse across sizes
        return cached[1]
    step = None
    try:
        reason = unsupported_reason(model) or _memory_shortfall(model)
        if reason is None:
            with torch.inference_mode():
                step = FastStep(model, rows)
                reason = _agrees_with_forward(model, step)
    except (RuntimeError, AttributeError) as e:  # an unexpected module layout, oneDNN without this dtype, ...
        reason = f"building it failed: {e}"
    result = (None, reason) if reason else (step, "the lean CPU step (fused, prepacked linears)")
    model._selfplay_fast_step = (signature, result)
    return result
