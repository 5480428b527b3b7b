"""Training that keeps fewer activations: RMSNorm and the SwiGLU product recompute their elementwise
intermediates in backward instead of keeping them.

Why: in full fine-tuning of a small model the activations autograd keeps for one micro-batch are the part of
the peak memory a config can move. Measured with saved-tensor hooks on SmolLM2-135M, one micro-batch of 4 rows
x 160 tokens in fp32: 819 MiB kept, of which the MLPs kept 492 MiB (their input, gate, silu(gate), up and the
product) and the RMSNorms 172 MiB (their input, the normalised input and the output). Two of those are cheap
elementwise functions of the others: silu(gate), of gate; the normalised input, of the input and one float per
token. Recomputing them instead keeps 621 MiB there; in micro-batches of 8 pairs the SPIN quickstart's training
unit peaked at 3.35-3.44 GiB instead of 3.75 (README, Threads and memory). Liger-Kernel does the same with Triton
kernels (GPU only); these are plain autograd Functions, so they run on any device. Gradients equal the unpatched
model's up to float rounding (tests/test_lean_activations.py).

Only the layer classes known to compute exactly this (Llama, Mistral, Qwen2: ``SUPPORTED``) are patched, per
instance (``module.forward``), so a model of any other architecture trains as before. Shapes: [..., E] for a
norm's input, [..., I] for the MLP's gate and up projections.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

# model_type -> (RMSNorm class name, MLP class name) whose forward is transformers' Llama computation.
SUPPORTED = {
    "llama": ("LlamaRMSNorm", "LlamaMLP"),
    "mistral": ("MistralRMSNorm", "MistralMLP"),
    "qwen2": ("Qwen2RMSNorm", "Qwen2MLP"),
}


class _RMSNorm(torch.autograd.Function):
    """transformers' RMSNorm, ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)``, keeping x and the
    per-token rsqrt [..., 1] for backward instead of also the normalised input [..., E]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        normed = x.to(torch.float32) * rstd  # recomputed [..., E]
        normed_cast = normed.to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed_cast).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d normed / d x32 = rstd * (I - normed normed^T / E), applied to the incoming gradient.
            g = (grad * weight).to(x.dtype).to(torch.float32)
            grad_x = (rstd * (g - normed * (g * normed).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None


class _SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, keeping gate and up [..., I] for backward instead of also silu(gate)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` keeps its own layers (None when :func:`keep_fewer_activations` can patch it)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: its modules stay
    cfg = getattr(inner, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED)}"
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return "its MLP is not a bias-free SwiGLU"
    return None


def _same_forward(module: torch.nn.Module, patched: Any, width: int) -> bool:
    """Whether ``patched`` computes the module class's own forward, bit for bit, on a small random input: the
    guard against a transformers release that changes what these classes compute."""
    weight = next(module.parameters())
    if weight.device.type == "meta" or weight.numel() == 0:  # not materialised (or sharded): nothing to compare
        return False
    x = torch.randn(2, width, generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    with torch.no_grad():
        return torch.equal(type(module).forward(module, x), patched(module, x))


def keep_fewer_activations(model: Any) -> int:
    """Patch every RMSNorm and MLP of a supported ``model`` (PEFT-wrapped or not) in place; returns how many
    modules now recompute their elementwise intermediates in backward (0 when the model is not supported, or
    when a module's own forward no longer computes what the patch does)."""
    if unsupported_reason(model) is not None:
        return 0
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    norm_cls, mlp_cls = SUPPORTED[inner.config.model_type]
    norms = [m for m in inner.modules() if type(m).__name__ == norm_cls]
    mlps = [m for m in inner.modules() if type(m).__name__ == mlp_cls]
    if not norms or not mlps or not (_same_forward(norms[0], _norm_forward, norms[0].weight.shape[0])
                                     and _same_forward(mlps[0], _mlp_forward, mlps[0].gate_proj.in_features)):
        return 0
    for module in norms:
        module.forward = types.MethodType(_norm_forward, module)
    for module in mlps:
        module.forward = types.MethodType(_mlp_forward, module)
    return len(norms) + len(mlps)
