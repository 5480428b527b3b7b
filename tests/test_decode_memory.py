"""Bounded memory in the decode loop: prefill in groups of at most PREFILL_TOKENS tokens, a KV-cache budget on
admission, and finished rows leaving without copying the whole cache; none of them changes a sample."""

from __future__ import annotations

from pathlib import Path

import pytest

QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Tom has 3 apples and buys 4 more. How many apples does he have?",
             "Write a short poem about the sea and the sky.", "What is 12 times 5?", "Say hi."]


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    import torch

    from selfplay.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(str(tiny_model), dtype="float32")
    torch.set_num_threads(threads)


def _ids(tok) -> list[list[int]]:
    return [tok(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def test_prefill_in_groups_equals_one_pass(loaded) -> None:
    import torch

    from selfplay.core.decoding import prefill

    model, tok = loaded
    ids = _ids(tok)
    prompts = [3, 2, 0, 5]
    seeds = lambda i, j: 0  # noqa: E731
    with torch.inference_mode():
        whole = prefill(model, ids, prompts, 2, tok.pad_token_id, seeds)
        grouped = prefill(model, ids, prompts, 2, tok.pad_token_id, seeds, max_tokens=len(ids[3]) + 1)  # one each
        assert [r.prompt for r in grouped.rows] == [r.prompt for r in whole.rows] == [3, 3, 2, 2, 0, 0, 5, 5]
        torch.testing.assert_close(grouped.mask, whole.mask)
        torch.testing.assert_close(grouped.logits, whole.logits, atol=1e-5, rtol=1e-4)
        tokens = torch.tensor([5, 7, 9, 11, 13, 15, 17, 19])
        for batch in (whole, grouped):
            batch.step(model, tokens)
        torch.testing.assert_close(grouped.logits, whole.logits, atol=1e-5, rtol=1e-4)


def test_finished_rows_leave_without_copying_the_cache(loaded) -> None:
    """keep() moves the surviving tail rows into the freed slots of the same buffers (views, no new buffer),
    and every row's next logits are as if it were decoded alone."""
    import torch

    from selfplay.core.decoding import prefill

    model, tok = loaded
    ids = _ids(tok)
    seeds = lambda i, j: 0  # noqa: E731

    def alone(prompt: int, tokens: list[int]) -> torch.Tensor:
        batch = prefill(model, ids, [prompt], 1, tok.pad_token_id, seeds)
        for t in tokens:
            batch.step(model, torch.tensor([t]))
        return batch.logits[0]

    with torch.inference_mode():
        batch = prefill(model, ids, [2, 3, 0, 4, 1], 1, tok.pad_token_id, seeds)
        batch.step(model, torch.tensor([5, 6, 7, 8, 9]))  # the first step puts the cache in growing buffers
        storage = [layer._buffers[0].untyped_storage().data_ptr() for layer in batch.cache.layers]
        order = batch.keep([0, 2, 4])  # rows 1 and 3 end; row 4 moves into slot 1
        assert order == [0, 4, 2] and [r.prompt for r in batch.rows] == [2, 1, 0]
        assert [layer._buffers[0].untyped_storage().data_ptr() for layer in batch.cache.layers] == storage
        batch.step(model, torch.tensor([10, 11, 12]))
        for row, (prompt, tokens) in enumerate([(2, [5, 10]), (1, [9, 11]), (0, [7, 12])]):
            torch.testing.assert_close(batch.logits[row], alone(prompt, tokens), atol=1e-5, rtol=1e-4)


def test_the_cache_budget_bounds_the_rows_and_keeps_every_sample(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from selfplay.core import decoding, kv_cache
    from selfplay.core.samplers import HFSampler, format_prompt

    model, tok = loaded
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS * 2]
    kw = dict(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=5, progress=False)
    free = HFSampler.from_loaded(model, tok, batch_size=12).generate(prompts, **kw)

    longest = max(len(tok(p)["input_ids"]) for p in prompts)
    per_prompt = 2 * (longest + 8) * kv_cache.kv_bytes_per_token(model)  # n rows x (prompt + new tokens)
    seen: list[tuple[int, int]] = []  # (rows, cached positions) at each step
    real_step = decoding.Batch.step
    monkeypatch.setattr(decoding.Batch, "step", lambda self, *a, **k: seen.append(tuple(self.mask.shape))
                        or real_step(self, *a, **k))
    budget = int(2.5 * per_prompt)
    bounded = HFSampler.from_loaded(model, tok, batch_size=12, cache_bytes=budget)
    assert bounded.generate(prompts, **kw) == free
    assert max(r for r, _ in seen) < 2 * len(prompts)  # unbounded, all 12 prompts x 2 rows would run at once
    # Within the budget, up to padding the batch has not cut yet (under a quarter of its positions).
    assert max(r * t for r, t in seen) * kv_cache.kv_bytes_per_token(model) <= budget * 4 / 3
    # A budget smaller than one prompt still decodes it, alone.
    seen.clear()
    tiny = HFSampler.from_loaded(model, tok, batch_size=12, cache_bytes=1)
    assert tiny.generate(prompts[:3], **kw) == free[:3] and max(r for r, _ in seen) == 2
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("queries", [1, 5])
def test_grouped_attention_equals_eager_attention(queries: int) -> None:
    """One query (a decode step: the matmul path) or several (prefill: SDPA), with a left-padded row."""
    import torch
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from selfplay.core.decoding import grouped_query_attention

    torch.manual_seed(0)
    query, key, value = torch.randn(2, 6, queries, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)  # 3 groups
    mask = torch.zeros(2, 1, queries, 7)
    mask[0, :, :, :3] = torch.finfo(torch.float32).min  # row 0 is left-padded by 3 positions
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 3, False
    ours, _ = grouped_query_attention(module, query, key, value, mask, scaling=0.35)
    theirs, _ = eager_attention_forward(module, query, key, value, mask, scaling=0.35)
    torch.testing.assert_close(ours, theirs)


def test_training_keeps_a_smaller_mmap_threshold_the_user_set(monkeypatch):
    """``large_blocks_unmapped`` maps blocks of 1 MiB and more, then hands glibc back its maximum; a smaller
    ``MALLOC_MMAP_THRESHOLD_`` of the user's (memory over time) is used inside and kept after it."""
    from selfplay.core import memory

    calls: list[int] = []
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append(value) or True)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with memory.large_blocks_unmapped():
        assert calls == [1 << 20]
    assert calls == [1 << 20, 32 << 20]
    calls.clear()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    with memory.large_blocks_unmapped():
        assert calls == [131072]
    assert calls == [131072, 131072]
    calls.clear()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(4 << 20))  # larger than ours: ours inside, the user's after
    with memory.large_blocks_unmapped():
        pass
    assert calls == [1 << 20, 4 << 20]
    for ignored in ("lots", str(64 << 20)):  # not a number, above glibc's maximum: glibc ignores it, so do we
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", ignored)
        calls.clear()
        with memory.large_blocks_unmapped():
            pass
        assert calls == [1 << 20, 32 << 20], ignored
