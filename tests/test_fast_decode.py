"""The lean CPU decode step (core/fast_decode.py): same logits and samples as the model's forward, used only
where it is known to be right, and refused (with the reason) everywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def random_model(kind: str, **extra):
    """A random 2-layer model of ``kind`` (grouped-query attention, 3 query heads per kv head)."""
    import transformers

    config_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                             "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                            num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                                            max_position_embeddings=256, **extra)
    return getattr(transformers, model_cls)(cfg).eval()


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    from selfplay.models import load_model

    return load_model(str(tiny_model), dtype="float32")


def test_lean_step_matches_forward_through_batch_surgery(loaded) -> None:
    """Rows leave (padding columns cut), a prompt joins: each lean step's logits equal the forward's."""
    from selfplay.core.decoding import prefill
    from selfplay.core.fast_decode import fast_step_for

    model, tok = loaded
    fast, why = fast_step_for(model, 4)
    assert fast is not None, why
    ids = [tok(q, add_special_tokens=False)["input_ids"] for q in ("a much longer prompt than the others", "hi", "ok")]
    with torch.inference_mode():
        batches = [prefill(model, ids, [0, 1], 1, tok.pad_token_id, lambda i, j: 0) for _ in range(2)]
        for tokens in (torch.tensor([5, 9]), torch.tensor([7, 11])):
            batches[0].step(model, tokens)
            batches[1].step(model, tokens, fast)
        for batch in batches:
            batch.keep([1])
            batch.extend(prefill(model, ids, [2], 1, tok.pad_token_id, lambda i, j: 0))
        for _ in range(70):  # past the cache's spare room: its buffers are remade mid-run
            batches[0].step(model, torch.tensor([13, 17]))
            batches[1].step(model, torch.tensor([13, 17]), fast)
            torch.testing.assert_close(batches[1].logits, batches[0].logits, atol=1e-5, rtol=1e-4)


def test_samples_are_the_same_with_and_without_the_lean_step(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfplay.core import decoding
    from selfplay.core.samplers import HFSampler, format_prompt

    model, tok = loaded
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in ("What is 2 + 3?", "Say hi.", "Name one.")]
    kw = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=4, progress=False)
    sampler = HFSampler.from_loaded(model, tok, batch_size=2)
    with_lean = sampler.generate(prompts, **kw)
    assert sampler.decode_step == "the lean CPU step (fused, prepacked linears)"
    real_decode = decoding.decode
    monkeypatch.setattr(decoding, "decode", lambda *a, **k: real_decode(*a, **{**k, "lean": False}))
    assert sampler.generate(prompts, **kw) == with_lean
    assert sampler.decode_step == "model forward (lean step turned off)"


def test_qkv_bias_models_are_supported() -> None:
    """Qwen2 has q/k/v biases: they are fused with the weights, and the step agrees with the forward."""
    from selfplay.core.fast_decode import fast_step_for

    fast, why = fast_step_for(random_model("qwen2"), 4)
    assert fast is not None and fast.layers[0].qkv_bias is not None, why


@pytest.mark.parametrize("kind, extra, reason", [
    ("qwen3", {}, "model type 'qwen3'"),  # q/k norms: a different layer
    ("llama", {"hidden_act": "gelu"}, "SwiGLU"),
    ("llama", {"mlp_bias": True}, "SwiGLU"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0}, "sliding-window"),
])
def test_other_architectures_fall_back_with_a_reason(kind: str, extra: dict, reason: str) -> None:
    from selfplay.core.fast_decode import fast_step_for

    fast, why = fast_step_for(random_model(kind, **extra), 4)
    assert fast is None and reason in why


def test_a_wrong_step_is_caught_by_the_one_time_check(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the lean step computed something else (here: no rotary embedding), it is not used."""
    from selfplay.core import fast_decode

    monkeypatch.setattr(fast_decode.FastStep, "_rope", lambda self, x, cos, sin: x)
    monkeypatch.delattr(loaded[0], "_selfplay_fast_step", raising=False)  # built and kept by earlier tests
    fast, why = fast_decode.fast_step_for(loaded[0], 4)
    assert fast is None and "differ from the model's forward" in why


def test_bfloat16_lean_step_equals_the_grouped_forward(tiny_model: Path) -> None:
    """In bf16 the lean step's logits are the forward's with the same attention (grouped_query_attention, the
    eager order), bit for bit; against the SDPA forward they agree within the one-time check's tolerance."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 kernels for this CPU (the lean step is not used in bf16 here)")
    from selfplay.config import ModelConfig
    from selfplay.core import fast_decode
    from selfplay.core.decoding import GROUPED_ATTENTION
    from selfplay.core.samplers import make_sampler

    model = make_sampler("hf", str(tiny_model), model_cfg=ModelConfig(dtype="bfloat16"), batch_size=4,
                         device="cpu").model
    with torch.inference_mode():
        lean = fast_decode.step_logits(model, GROUPED_ATTENTION, fast_decode.FastStep(model, 4))
        assert torch.equal(lean, fast_decode.step_logits(model, GROUPED_ATTENTION))
        assert fast_decode._agrees_with_forward(model, fast_decode.FastStep(model, 4)) is None


def test_the_step_is_kept_until_the_weights_change(loaded) -> None:
    """Built once per model; an in-place weight update (as an optimizer step makes) rebuilds it."""
    from selfplay.core.fast_decode import fast_step_for

    model = loaded[0]
    first, _ = fast_step_for(model, 4)
    assert fast_step_for(model, 4)[0] is first
    weight = model.model.layers[0].mlp.down_proj.weight
    try:
        with torch.no_grad():
            weight.mul_(2.0)
        second, why = fast_step_for(model, 4)  # agrees with the changed forward, so not stale
        assert second is not None and second is not first, why
    finally:
        with torch.no_grad():
            weight.mul_(0.5)


def test_an_unexpected_module_layout_falls_back() -> None:
    """A supported model type whose modules are not where the lean step reads them (e.g. a wrapper)."""
    from selfplay.core.fast_decode import fast_step_for

    model = random_model("llama")
    model.model = torch.nn.Module()  # no .layers, .embed_tokens, ...
    fast, why = fast_step_for(model, 4)
    assert fast is None and why.startswith("building it failed")
