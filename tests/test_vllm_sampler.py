"""The vLLM backend against vLLM's interface, with a stand-in ``vllm`` module injected into sys.modules."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from selfplay.errors import MissingExtraError


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    """Records constructor and generate arguments; answers "<prompt length>:<sample j>" per sample,
    returning the samples of each request in reverse index order (vLLM does not promise index order)."""

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[list[dict], list[FakeSamplingParams], dict]] = []
        FakeLLM.instances.append(self)

    def generate(self, prompts: list[dict], params: list[FakeSamplingParams], **kw: Any) -> list[Any]:
        self.calls.append((prompts, params, kw))
        outputs = []
        for prompt, p in zip(prompts, params):
            # vLLM's CompletionOutput: finish_reason "stop" with stop_reason None (EOS) or the stop text.
            stop = (p.kwargs.get("stop") or [None])[0]
            samples = [types.SimpleNamespace(index=j, text=f"{len(prompt['prompt_token_ids'])}:{j}", token_ids=[1] * (j + 1),
                                             finish_reason="length" if j == 2 else "stop",
                                             stop_reason=stop if j == 1 else None)
                       for j in range(p.kwargs["n"])]
            outputs.append(types.SimpleNamespace(outputs=samples[::-1]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    FakeLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_arguments_and_output_order(fake_vllm, tiny_model: Path) -> None:
    from selfplay.config import ModelConfig
    from selfplay.core.samplers import VLLMSampler, format_prompt, make_sampler, sample_seed

    sampler = make_sampler("vllm", str(tiny_model), model_cfg=ModelConfig(dtype="bfloat16"),
                           tensor_parallel_size=4, gpu_memory_utilization=0.8, seed=3)
    assert isinstance(sampler, VLLMSampler)
    (llm,) = FakeLLM.instances
    assert llm.kwargs == {"model": str(tiny_model), "tensor_parallel_size": 4, "gpu_memory_utilization": 0.8,
                          "seed": 3, "dtype": "bfloat16",  # no trust_remote_code unless asked
                          "enable_prefix_caching": True}  # an episode's next step reuses its prompt's KV blocks
    prompts = [format_prompt(sampler.tokenizer, [{"role": "user", "content": "x " * k}]) for k in (5, 1, 9)]
    lengths = [len(sampler.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    seen = []
    out = sampler.generate(prompts, n=3, temperature=0.7, top_p=0.9, max_new_tokens=17, seed=11,
                           progress=False, on_result=lambda i, texts: seen.append(i), cache_keys=["a", "b", "c"])
    sampler.release(["a", "b", "c"])  # episode keys are accepted; the engine caches prefixes by itself
    assert out == [[f"{n}:0", f"{n}:1", f"{n}:2"] for n in lengths] and seen == [0, 1, 2]
    (inputs, params, kw) = llm.calls[0]
    assert [len(i["prompt_token_ids"]) for i in inputs] == lengths and kw == {"use_tqdm": False}
    assert [p.kwargs for p in params] == [
        {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 17, "seed": sample_seed(11, p, 0), "stop": None}
        for p in prompts]


def test_stop_sequences_and_finish_reasons(fake_vllm, tiny_model: Path) -> None:
    """Stop texts reach SamplingParams; vLLM's finish_reason/stop_reason become eos / stop / length."""
    from selfplay.core.samplers import VLLMSampler

    sampler = VLLMSampler(str(tiny_model))
    (out,) = sampler.complete(["a"], n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0,
                              stop=["\nObservation:"], progress=False)
    assert FakeLLM.instances[0].calls[0][1][0].kwargs["stop"] == ["\nObservation:"]
    assert [c.finish_reason for c in out] == ["eos", "stop", "length"] and [c.num_tokens for c in out] == [1, 2, 3]


def test_greedy_asks_once_and_copies(fake_vllm, tiny_model: Path) -> None:
    from selfplay.core.samplers import VLLMSampler

    sampler = VLLMSampler(str(tiny_model))
    out = sampler.generate(["a", "bb"], n=2, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0, progress=False)
    assert all(p.kwargs["n"] == 1 for p in FakeLLM.instances[0].calls[0][1])
    assert [len(set(s)) for s in out] == [1, 1] and [len(s) for s in out] == [2, 2]


def test_generate_stage_with_vllm_backend(fake_vllm, cli, tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": "hi " * i}],
                                        "reference": "r"}) + "\n" for i in range(1, 5)))
    result = cli(["generate", "--backend", "vllm", "--model", tiny_model, "--data", data, "--out", tmp_path / "g",
                  "--n", 2, "--temperature", 0.5])
    assert result.exit_code == 0, result.output
    assert cli(["generate", "merge", tmp_path / "g"]).exit_code == 0
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2", "p3", "p4"]
    assert all(len(r["samples"]) == 2 and r["sampler"]["backend"] == "vllm" for r in rows)


def test_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    from selfplay.core.samplers import VLLMSampler

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(MissingExtraError, match=r"selfplay\[gpu\]"):
        VLLMSampler(str(tiny_model))
