"""KV caches kept between an episode's steps (selfplay.core.prefix_cache): an agent episode, a RISE episode and
the sequential multi-turn evaluation sample exactly what a full re-prefill of every prompt samples (fp32, the
tiny model), while most prompt tokens are reused; caches are freed when episodes end and stay in budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from selfplay.core.prefix_cache import CachedRow, PrefixStore, common_prefix


class Counting:
    """A sampler proxy that either passes the cache keys on (and counts reused prompt tokens) or drops them,
    so every prompt is prefilled whole (today's behaviour without a cache)."""

    def __init__(self, sampler: Any, cached: bool) -> None:
        self.sampler, self.cached, self.tokenizer = sampler, cached, sampler.tokenizer
        self.prompt_tokens = self.reused = self.first_call = 0

    def generate(self, prompts: list[str], **kwargs: Any) -> list[list[str]]:
        if not self.cached:
            kwargs.pop("cache_keys", None)
        out = self.sampler.generate(prompts, **kwargs)
        self.first_call = self.first_call or self.sampler.last_stats["prompt_tokens"]
        self.prompt_tokens += self.sampler.last_stats["prompt_tokens"]
        self.reused += self.sampler.last_stats["reused_prompt_tokens"]
        return out

    def release(self, keys: list) -> None:
        self.sampler.release(keys)


@pytest.fixture(scope="module")
def sampler(tiny_model: Path):
    from selfplay.config import ModelConfig
    from selfplay.core.samplers import make_sampler

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_sampler("hf", str(tiny_model), model_cfg=ModelConfig(dtype="float32"), batch_size=3, device="cpu")
    torch.set_num_threads(threads)


def test_store_takes_the_longest_shared_prefix_and_stays_in_budget() -> None:
    def row(tokens: list[int]) -> CachedRow:
        return CachedRow(tokens, [(torch.zeros(1, len(tokens), 2), torch.zeros(1, len(tokens), 2))])

    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([1, 2], [1, 2, 3]) == 2
    store = PrefixStore(budget=row([0] * 10).nbytes)
    store.put("a", [row([1, 2, 3, 4]), row([1, 2, 9, 9, 9])])
    best, reuse = store.take("a", [1, 2, 9, 9, 7])
    assert best.tokens == [1, 2, 9, 9, 9] and reuse == 4 and "a" not in store  # taken out of the store
    store.put("b", [row([5, 6, 7])])
    assert store.take("b", [5, 6, 7])[1] == 2  # the prompt's last token is always fed again
    assert store.take("b", [5, 6]) is None and store.take("x", [1]) is None
    store.put("c", [row([1] * 6)])
    store.put("d", [row([2] * 6)])  # 12 positions > budget of 10: the oldest key goes
    assert "c" not in store and "d" in store and store.nbytes == row([2] * 6).nbytes
    store.release(["d"])
    assert len(store) == 0 and store.nbytes == 0


def _agent_run(sampler: Any, shared_data: Path, cached: bool, temperature: float) -> tuple[list, Counting]:
    from selfplay.config import AgentConfig, GenerateConfig
    from selfplay.core.samplers import format_prompt
    from selfplay.envs.agent_episodes import load_agent, new_episodes, play_agent_episodes, sampler_steps

    settings = AgentConfig(task="hotpotqa", search_sources=[str(shared_data / "agent" / "search_cache.json")],
                           max_steps=4, retries=1, temperature=0.7)
    records = [{"id": f"q{i}", "messages": [{"role": "user", "content": q}], "reference": "",
                "meta": {"answer": "Paris"}}
               for i, q in enumerate(["Where is the Eiffel tower?", "Who wrote Hamlet?", "What is the capital of France?",
                                      "Which river flows through Paris and Rouen?"])]
    proxy = Counting(sampler, cached)
    episodes = new_episodes(records, lambda m: format_prompt(sampler.tokenizer, m, "alpaca"), fewshot="",
                            samples=1, seed=0)
    done: list = []
    play_agent_episodes(load_agent(settings), sampler_steps(proxy, GenerateConfig(max_new_tokens=12)), episodes,
                        settings, done.append, temperature)
    return sorted((ep.record["id"], ep.text()) for ep in done), proxy


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_an_agent_episode_samples_what_full_prefills_sample(sampler, shared_data: Path, temperature: float) -> None:
    full, uncached = _agent_run(sampler, shared_data, cached=False, temperature=temperature)
    kept, counted = _agent_run(sampler, shared_data, cached=True, temperature=temperature)
    assert kept == full  # token for token: every step of every trajectory
    assert max(len(text) for _, text in full) > len(full[0][1]) // 2  # episodes ran several steps
    assert uncached.reused == 0 and counted.prompt_tokens == uncached.prompt_tokens
    # The first step prefills its prompts whole; of every later step's prompts most came from the cache.
    assert counted.reused > 0.8 * (counted.prompt_tokens - counted.first_call)
    assert len(sampler.prefix_store) == 0 and sampler.prefix_store.nbytes == 0  # every ended episode freed its cache


def _rise_cfg(temperature: float):
    from selfplay.methods import load_config

    cfg = load_config(None, ["method=rise", "rise.env=arith", "rise.max_turns=3", "rise.num_samples=[1,3]",
                             "generate.max_new_tokens=10", f"generate.temperature={temperature}"])
    return cfg


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_rise_episode_samples_what_full_prefills_sample(sampler, temperature: float) -> None:
    from selfplay.envs.answer_envs import ENVS
    from selfplay.stages.rollout import LocalTurnModel, TurnModels, play_episodes

    cfg = _rise_cfg(temperature)
    records = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Tom has {i} apples and buys {i + 2} more. "
                                              "How many apples does he have?"}],
                "reference": f"#### {2 * i + 2}", "meta": {"task": "arith"}} for i in range(4)]
    runs = {}
    for cached in (False, True):
        proxy = Counting(sampler, cached)
        episodes: list = []
        play_episodes(ENVS["arith"], records, TurnModels(cfg, "policy", {"policy": LocalTurnModel(proxy, cfg)}), cfg,
                      episodes.append)
        runs[cached] = (sorted((ep.record["id"], ep.conversation(), ep.actions) for ep in episodes), proxy)
    assert runs[True][0] == runs[False][0]
    assert any(len(actions) > 1 for _, _, actions in runs[True][0])  # some episodes went on to later turns
    assert runs[True][1].reused > 0 and runs[False][1].reused == 0
    assert len(sampler.prefix_store) == 0


def test_sequential_evaluation_samples_what_full_prefills_sample(sampler) -> None:
    from selfplay.envs.answer_envs import ENVS
    from selfplay.evals.multiturn import evaluate_multiturn
    from selfplay.stages.rollout import LocalTurnModel

    cfg = _rise_cfg(1.0)
    records = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i + 3}?"}],
                "reference": f"#### {2 * i + 3}", "meta": {"task": "arith"}} for i in range(3)]
    results = {}
    for cached in (False, True):
        proxy = Counting(sampler, cached)
        model = LocalTurnModel(proxy, dataclasses.replace(cfg))
        metrics = evaluate_multiturn(ENVS["arith"], model.respond, records, turns=4, context_window=2, parallel=2,
                                     seed=5, release=model.release)
        results[cached] = (metrics["sequential"], metrics["parallel"], metrics["outcomes"], proxy.reused)
    assert results[True][:3] == results[False][:3]
    assert results[True][3] > 0 and len(sampler.prefix_store) == 0


def test_a_lora_model_takes_its_cache_under_the_base_models_keyword(tiny_model: Path) -> None:
    """PEFT's forward names neither ``cache`` nor ``past_key_values`` and passes both on: the keyword is the base
    model's, so decoding a LoRA model uses the name transformers keeps (no deprecation warning)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from selfplay.core.kv_cache import cache_kwarg, new_cache

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    keyword = cache_kwarg(base)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert cache_kwarg(lora) == keyword
    cache = new_cache(lora.get_base_model())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        lora(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **{keyword: cache})
    assert cache.get_seq_length() == 3
