"""Left-padded, logits_to_keep log-probs equal a naive per-sequence computation."""

import torch

from selfplay.core.examples import TokenizedExample, truncate
from selfplay.core.logprobs import example_batch, sequence_logps, split_responses


def pair(prompt: list[int], chosen: list[int], rejected: list[int]) -> TokenizedExample:
    return TokenizedExample("x", prompt, [chosen, rejected], [[True] * len(chosen), [True] * len(rejected)])


def naive_logp(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logps = logits.log_softmax(-1)
    return sum(logps[len(prompt) - 1 + j, t].item() for j, t in enumerate(response))


def test_sequence_logps_match_naive(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pairs = [pair([5, 6, 7, 8, 9], [10, 11, 12], [13, 14]), pair([20, 21], [22], [23, 24, 25, 26, 27])]
    batch = example_batch(pairs, pad_id=0)
    with torch.no_grad():
        logps, ntok = sequence_logps(model, batch)
    chosen, rejected = split_responses(logps, 2)
    for i, p in enumerate(pairs):
        assert abs(chosen[i].item() - naive_logp(model, p.prompt_ids, p.responses[0])) < 1e-4
        assert abs(rejected[i].item() - naive_logp(model, p.prompt_ids, p.responses[1])) < 1e-4
    assert ntok.tolist() == [3, 1, 2, 5]


def test_truncate_keeps_prompt_end_and_response_start():
    prompt, (resp,), cut = truncate(list(range(10)), [list(range(100, 120))], max_length=16, max_prompt_length=6)
    assert cut and prompt == [4, 5, 6, 7, 8, 9] and resp == list(range(100, 110))
    prompt, (resp,), cut = truncate([1, 2], [[3, 4]], max_length=16, max_prompt_length=6)
    assert not cut and prompt == [1, 2] and resp == [3, 4]


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_chunked_path_matches_full_logits_in_value_and_gradient(tiny_model, monkeypatch):
    """Decoder + chunked, checkpointed lm_head == the model's own forward, including the backward pass."""
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs = [pair([5, 6, 7, 8, 9], [10, 11, 12], [13, 14]), pair([20, 21], [22], [23, 24, 25, 26, 27])]
    batch = example_batch(pairs, pad_id=0)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])  # distinct per row so a row mix-up changes the gradient

    full, _ = lp._full_logits_logps(model, batch)
    (full * weights).sum().backward()
    full_grad = _grads(model)
    model.zero_grad()
    # 3 tokens per chunk: the 11 response tokens span four chunks, the last one partial.
    monkeypatch.setattr(lp, "_CHUNK_FLOATS", 3 * model.config.vocab_size)
    monkeypatch.setattr(lp, "_MIN_CHUNK_TOKENS", 1)
    chunked, ntok = lp._chunked_logps(*lp._decoder_and_head(model), batch)
    (chunked * weights).sum().backward()
    assert torch.allclose(chunked, full, atol=1e-5)
    assert torch.allclose(_grads(model), full_grad, atol=1e-5)
    assert ntok.tolist() == [3, 1, 2, 5]


def test_sequence_logps_takes_the_chunked_path_only_for_plain_models(tiny_model):
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert lp._decoder_and_head(model) is not None
    batch = example_batch([pair([5, 6, 7], [8, 9], [10])], pad_id=0)
    sequence_logps(model, batch)
    assert lp._SPLIT_OK[model] is True  # the one-time check passed, so later calls project in chunks

    wrapped = torch.nn.Sequential(model)  # stands in for DDP/FSDP: not a PreTrainedModel
    assert lp._decoder_and_head(wrapped) is None
    model.config.final_logit_softcapping = 30.0  # Gemma-2-style capping happens after lm_head
    assert lp._decoder_and_head(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Sequential(model.lm_head)  # a wrapped head (PEFT modules_to_save, tensor-parallel)
    assert lp._decoder_and_head(model) is None


def test_chunked_path_through_peft_keeps_lora_trainable(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = example_batch([pair([5, 6, 7], [8, 9], [10])], pad_id=0)
    full, _ = lp._full_logits_logps(model, batch)
    chunked, _ = lp._chunked_logps(*lp._decoder_and_head(model), batch)
    assert torch.allclose(chunked, full, atol=1e-5)  # LoRA (non-zero init) is inside the decoder path
    chunked.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
