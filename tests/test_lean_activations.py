"""selfplay.core.lean_activations: the patched RMSNorm and SwiGLU give the model's own outputs and gradients (up to
rounding) while autograd keeps fewer bytes for backward; other architectures are left alone."""

from __future__ import annotations

import copy

import pytest
import torch


def _saved_bytes(model: torch.nn.Module, ids: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct non-parameter tensors autograd keeps for backward in one forward, and the loss."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return sum(seen.values()), loss


def _pair(tiny_model):
    from transformers import AutoModelForCausalLM

    from selfplay.core.lean_activations import keep_fewer_activations

    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    lean = copy.deepcopy(plain)
    layers = plain.config.num_hidden_layers
    assert keep_fewer_activations(lean) == 2 * layers + 1 + layers  # 2 norms + 1 MLP per layer, the final norm
    return plain.train(), lean.train()


def test_same_loss_and_gradients_with_fewer_saved_bytes(tiny_model):
    plain, lean = _pair(tiny_model)
    ids = torch.randint(0, plain.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(0))
    plain_bytes, plain_loss = _saved_bytes(plain, ids)
    lean_bytes, lean_loss = _saved_bytes(lean, ids)
    plain_loss.backward()
    lean_loss.backward()
    assert torch.allclose(plain_loss, lean_loss, rtol=0, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    # One [rows, tokens, I] silu(gate) per MLP and one [rows, tokens, E] normalised input per norm fewer.
    cfg, tokens = plain.config, ids.numel()
    fewer = 4 * tokens * (cfg.num_hidden_layers * (cfg.intermediate_size + 2 * cfg.hidden_size) + cfg.hidden_size)
    assert plain_bytes - lean_bytes >= 0.9 * fewer, (plain_bytes, lean_bytes, fewer)


def test_lora_and_bf16_autocast_agree_with_the_model(tiny_model):
    """Through PEFT's LoRA layers (frozen norms: no weight gradient asked for) and under bf16 autocast."""
    from peft import LoraConfig, get_peft_model

    plain, lean = _pair(tiny_model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(0)
    plain = get_peft_model(plain, lora)
    torch.manual_seed(0)
    lean = get_peft_model(lean, lora)
    for p in list(plain.parameters()) + list(lean.parameters()):  # B = 0 at the start: give LoRA a gradient path
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, plain.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for autocast in (False, True):
        losses = []
        for model in (plain, lean):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                _, loss = _saved_bytes(model, ids)
            loss.backward()
            losses.append(loss.detach())
        assert torch.allclose(*losses, atol=1e-6 if not autocast else 2e-2)
        for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
            if a.requires_grad:
                tol = {"rtol": 1e-4, "atol": 1e-7} if not autocast else {"rtol": 0.1, "atol": 1e-3}
                assert torch.allclose(a.grad, b.grad, **tol), (autocast, name)


def test_other_architectures_are_left_alone():
    from selfplay.core.lean_activations import keep_fewer_activations, unsupported_reason

    class Gemma(torch.nn.Module):
        config = type("Config", (), {"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh"})()

    model = Gemma()
    assert "gemma" in unsupported_reason(model)
    assert keep_fewer_activations(model) == 0


def test_a_norm_that_computes_something_else_is_not_patched(tiny_model, monkeypatch):
    """Should a transformers release change what the class computes (here: Gemma's 1 + weight), nothing is patched."""
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from selfplay.core.lean_activations import keep_fewer_activations

    def gemma_style(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (normed * (1 + self.weight)).to(x.dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", gemma_style)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert keep_fewer_activations(model) == 0
    assert all("forward" not in vars(m) for m in model.modules())


@pytest.mark.parametrize("grad_weight", [True, False])
def test_rmsnorm_function_against_the_formula(grad_weight):
    """The norm against autograd through transformers' formula written out (which normalises in float32 whatever
    the input dtype: float64 inputs show the float32 rounding of both)."""
    from selfplay.core.lean_activations import _RMSNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=grad_weight)
    upstream = torch.randn(2, 5, 8, dtype=torch.float64, generator=g)
    ours = _RMSNorm.apply(x, w, 1e-6)
    x32 = x.to(torch.float32)
    formula = w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
    assert torch.allclose(ours, formula, rtol=0, atol=0)
    inputs = (x, w) if grad_weight else (x,)
    mine = torch.autograd.grad(ours, inputs, upstream)
    want = torch.autograd.grad(formula, inputs, upstream)
    for a, b in zip(mine, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
