"""The packed training layout (each prompt once, no padding) scores exactly what the left-padded one does."""

import pytest
import torch

from selfplay.core.examples import TokenizedExample
from selfplay.core.packing import collate_packed, packed_example_batch, sequence_tokens, unpack


def example(prompt: list[int], *responses: list[int], masks: list[list[bool]] | None = None) -> TokenizedExample:
    return TokenizedExample("x", prompt, list(responses), masks or [[True] * len(r) for r in responses])


# Pairs of unequal lengths, and a response with an unscored context segment in its middle (an observation).
PAIRS = [example([5, 6, 7, 8, 9], [10, 11, 12], [13, 14]),
         example([20, 21], [22], [23, 24, 25, 26, 27]),
         example([30, 31, 32], [33, 34, 35, 36, 37], [38, 39],
                 masks=[[True, False, False, True, True], [True, True]])]
# Records of 10, 8, 10, 12 and 4 tokens: rows of capacity 12, the 8 and the 4 share one, the 10s end in pads.
SHARED_ROWS = PAIRS + [example([40, 41, 42], [43, 44, 45, 46, 47], [48, 49, 50, 51]), example([60], [61], [62, 63])]


def test_layout_shares_each_prompt_and_pads_only_row_ends() -> None:
    batch = packed_example_batch(PAIRS[:2])
    # Records of 10 and 8 tokens: rows of capacity 10, one record each (8 + 10 > 10); prompt, chosen,
    # rejected in each; no token twice; the shorter row ends in 2 pads (block -1).
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 5, 6], [0, 1, 2, 2, 3, 4, 5, 6, 0, 0]]
    assert batch["branch"].tolist() == [[0] * 5 + [1] * 3 + [2] * 2, [0] * 2 + [1] + [2] * 5 + [0, 0]]
    assert batch["block"].tolist() == [[0] * 10, [1] * 8 + [-1, -1]]
    # Flat indices into rows x capacity: the first token of chosen and of rejected are both predicted from
    # the prompt's last position (4; 11 = row 1, column 1).
    assert batch["label_index"].tolist() == [4, 5, 6, 4, 8, 11, 11, 13, 14, 15, 16]
    assert batch["label_row"].tolist() == [0, 0, 0, 2, 2, 1, 3, 3, 3, 3, 3]  # chosen rows 0-1, rejected rows 2-3
    assert batch["row_tokens"].tolist() == [3, 1, 2, 5]
    assert sequence_tokens(PAIRS[:2]) == 2 * 5 + 3 + 2 + 2 * 2 + 1 + 5
    prompts, responses, masks = unpack(batch)
    assert prompts == [[5, 6, 7, 8, 9], [20, 21]] * 2 and responses == [[10, 11, 12], [22], [13, 14], [23, 24, 25, 26, 27]]
    with pytest.raises(ValueError, match="prompt token"):
        collate_packed([[]], [[[1]]])


def test_records_fill_rows_first_fit_decreasing() -> None:
    """Records of 10, 4 and 5 tokens: capacity 10; the 5 and the 4 share the second row (the longest first)."""
    batch = collate_packed([[1] * 6, [2, 2], [3, 3, 3]], [[[4] * 4], [[5, 5]], [[6, 6]]])
    assert batch["block"].tolist() == [[0] * 10, [2] * 5 + [1] * 4 + [-1]]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0]
    assert unpack(batch)[1] == [[4] * 4, [5, 5], [6, 6]]


def _grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_path_equals_the_padded_path_in_value_and_gradient(tiny_model, attention) -> None:
    """Same log-probs, token counts and gradients as the left-padded chunked path, per-token masks included."""
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention)
    assert lp.uses_packing(model)
    weights = torch.tensor([1.0, -2.0, 0.5, 0.75, 1.25, 3.0, -1.5, 0.25, 2.0, -0.5])  # distinct per row: a mix-up shows
    padded, ntok = lp.sequence_logps(model, lp.example_batch(SHARED_ROWS, pad_id=0))
    (padded * weights).sum().backward()
    padded_grad = _grads(model)
    model.zero_grad()
    batch = lp.training_batch(model, SHARED_ROWS, pad_id=0)
    assert "label_index" in batch and batch["input_ids"].shape == (4, 12)
    assert batch["block"][3].tolist() == [1] * 8 + [4] * 4
    packed, packed_ntok = lp.sequence_logps(model, batch)
    assert lp._PACKED_OK[model] is True  # the one-time check against the model's own forward passed
    (packed * weights).sum().backward()
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert packed_ntok.tolist() == ntok.tolist() == [3, 1, 3, 5, 1, 2, 5, 2, 4, 2]
    # Summation order differs between the layouts: fp32 noise relative to the largest gradient entry.
    scale = padded_grad.abs().max().item()
    torch.testing.assert_close(_grads(model), padded_grad, atol=1e-6 * scale, rtol=1e-5)


def test_single_responses_pack_and_models_without_block_masks_stay_padded(tiny_model) -> None:
    """A likelihood batch (one response per record) packs too; a model whose attention takes no block mask
    gets the padded layout; a model failing the one-time check scores a packed batch unpacked."""
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    singles = [example(e.prompt_ids, e.responses[0], masks=e.masks[:1]) for e in PAIRS]
    with torch.no_grad():
        packed, _ = lp.sequence_logps(model, lp.training_batch(model, singles, pad_id=0))
        padded, _ = lp.sequence_logps(model, lp.example_batch(singles, pad_id=0))
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
        lp._PACKED_OK[model] = False
        torch.testing.assert_close(lp.sequence_logps(model, lp.training_batch(model, singles, 0))[0], padded)
    model.config._attn_implementation = "flash_attention_2"  # not given a block mask: padded batches
    assert not lp.uses_packing(model) and "attention_mask" in lp.training_batch(model, singles, pad_id=0)


@pytest.mark.parametrize("packed", [True, False])
def test_evaluation_scores_each_response_as_if_alone(tiny_model, monkeypatch, packed) -> None:
    """The evaluation's scorer (several responses per prompt, one record per prompt where the model packs)
    gives each (prompt, response) the log-prob of the model's own forward over that pair alone, truncation
    included: a long response cuts its prompt and is scored apart from its siblings; prompts with 3, 2 and no
    responses share batches of 2 sequences."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfplay.core.logprobs as lp
    import selfplay.stages.evaluate as ev
    from selfplay.core.examples import truncate
    from selfplay.core.samplers import encode_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    monkeypatch.setattr(lp, "uses_packing", lambda m: packed)
    layouts = []

    def spy(*args, **kwargs):
        batch = lp.training_batch(*args, **kwargs)
        layouts.append("label_index" in batch)
        return batch

    monkeypatch.setattr(ev, "training_batch", spy)
    max_length = 40
    prompts = ["Sam has 9 books and buys 2 more. How many books does Sam have now?", "What is 3 + 4?", "Hello"]
    long = " ".join(["seven"] * 30)  # with its prompt over max_length: the prompt is cut to its last 20 tokens
    responses = [["The answer is 11.", long, "11"], ["7", "It is 8."], []]
    scored = ev.prompt_responses_logps(model, tok, prompts, responses, batch_size=2, max_length=max_length)

    def alone(prompt: str, response: str) -> tuple[float, int]:
        ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        pid, (rid,), _ = truncate(encode_prompt(tok, prompt), [ids], max_length, max_length // 2)
        with torch.no_grad():
            logits = model(torch.tensor([pid + rid])).logits[0, len(pid) - 1:-1].float()
        return logits.log_softmax(-1).gather(-1, torch.tensor(rid)[:, None]).sum().item(), len(rid)

    assert [len(s) for s in scored] == [3, 2, 0]
    assert layouts and set(layouts) == {packed}  # the layout under test scored every batch
    cut = truncate(encode_prompt(tok, prompts[0]), [tok(long)["input_ids"]], max_length, max_length // 2)[2]
    assert cut  # the long response really is truncated
    for prompt, texts, got in zip(prompts, responses, scored):
        for text, (logp, count) in zip(texts, got):
            want_logp, want_count = alone(prompt, text)
            assert count == want_count
            assert logp == pytest.approx(want_logp, abs=1e-4)
