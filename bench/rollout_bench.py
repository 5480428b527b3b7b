"""Multi-turn and agent rollouts: our stages against the anchors' loops (``bench/rollout_anchors.py``).

Three comparisons, each on the same records, model weights, dtype, prompt format, sampling and limits:

* ``agent`` — HotpotQA questions (FireAct's set) with the offline replay search and the quickstart's one-shot
  ReAct prompt, greedy, ``max_steps`` steps of at most ``max_new_tokens`` tokens, no retry: our agent rollout
  stage (``run_agent_rollout``: all live questions step together, each episode's KV cache kept between its
  steps) against ReinholdM/SPIN ``generation_fireact.py`` (question by question, step by step, a full
  ``model.generate`` on the whole trajectory each time). Every episode plays all ``max_steps`` steps: in this
  arm ``finish`` scores the answer without ending the episode (:func:`finish_goes_on`, both sides). The base
  model answers at once (one-step episodes, nothing for a kept cache to serve, the same work as single-turn
  generation); trained agents take several steps (4.3 per episode after one iteration of the HotpotQA
  quickstart), which is the work whose re-prefill the anchor pays at every step.
* ``rise`` — GSM8K problems, 2 turns, turn 1 one sample, turn 2 the best of 4, temperature 1.0: our rollout
  stage (``run_rollout``) against cmu-mind/RISE ``workflow_gen.py`` (one conversation, one candidate at a time).
* ``multiturn`` — the 5-turn sequential evaluation (context window 2, one sample per turn, temperature 1.0):
  ours (``evaluate_multiturn``, parallel part off) against ``workflow_eval.py``'s one problem at a time.

Each arm alternates with its anchor for ``pairs`` rounds after a warm-up of both on a quarter of the records.
The anchors play one conversation at a time, so their rate does not depend on how many they are given: each is
timed on the first ``anchor_*`` of the records ours plays (fewer where ours plays many, to bound the bench's
time), and the ratios are of rates (episodes/s, tokens/s).
Reported per arm: episodes/s (trajectories, RISE episodes, evaluated problems) and generated tokens/s (up to
and including EOS or the stop text), and for ours the share of prompt tokens its kept caches served.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.measure import console, ratios, summarize

REPO = Path(__file__).resolve().parents[1]


class Counted:
    """Our sampler, counting what each ``generate`` call decoded (tokens, prompt tokens, cache-served ones)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.tokenizer = sampler, sampler.tokenizer
        self.tokens = self.prompt_tokens = self.reused = self.calls = 0

    def generate(self, prompts: list[str], **kwargs: Any) -> list[list[str]]:
        out = self.sampler.generate(prompts, **kwargs)
        self.calls += len(prompts)  # prompts decoded: one per agent step (no retries), per turn of an episode
        stats = self.sampler.last_stats
        self.tokens += stats["tokens"]
        self.prompt_tokens += stats["prompt_tokens"]
        self.reused += stats["reused_prompt_tokens"]
        return out

    def release(self, keys: list) -> None:
        self.sampler.release(keys)


class _FinishThatGoesOn:
    """``finish[answer]`` scored by the task, shown as the finish tool shows it, without ending the episode."""

    def __init__(self, finish: Any) -> None:
        self.finish = finish
        self.name, self.usage, self.concurrent = finish.name, finish.usage, finish.concurrent

    def run(self, argument: str, record: dict[str, Any]) -> Any:
        return dataclasses.replace(self.finish.run(argument, record), done=False)


@contextmanager
def finish_goes_on() -> Iterator[None]:
    """Within the block, agents built from the tool registry get a ``finish`` that does not end the episode, so
    every episode plays ``agent.max_steps`` steps (the bench's multi-step workload; restored on exit)."""
    from selfplay.envs import tools

    original = tools.TOOLS["finish"]
    tools.TOOLS["finish"] = dataclasses.replace(
        original, build=lambda agent, task, remote: _FinishThatGoesOn(original.build(agent, task, remote)))
    try:
        yield
    finally:
        tools.TOOLS["finish"] = original


def _records(source: Path, num: int, fmt: str) -> list[dict[str, Any]]:
    from selfplay.data.records import convert_rows
    from selfplay.data.sources import read_rows

    return [g[0] for g in convert_rows(read_rows(str(source))[:num], fmt, show_progress=False).groups]


def run_rollout_bench(model_name: str, data_dir: Path, out_dir: Path, *, agent_questions: int, max_steps: int,
                      step_tokens: int, rise_problems: int, eval_problems: int, turn_tokens: int, pairs: int,
                      dtype: str, anchor_questions: int | None = None,
                      anchor_eval_problems: int | None = None) -> dict[str, Any]:
    """The three comparisons; returns per arm its runs, summaries and ratios ours / anchor. ``anchor_questions``
    and ``anchor_eval_problems`` (default: all): how many of the agent questions and evaluation problems the
    anchors are timed on."""
    anchor_questions = min(anchor_questions or agent_questions, agent_questions)
    anchor_eval_problems = min(anchor_eval_problems or eval_problems, eval_problems)
    from bench.gen_bench import load_spin_recipe_model
    from bench.rollout_anchors import fireact_agent, rise_episodes, sequential_eval
    from selfplay.config import ModelConfig
    from selfplay.core.samplers import format_prompt, make_sampler
    from selfplay.envs.agent_episodes import load_agent
    from selfplay.envs.answer_envs import ENVS
    from selfplay.evals.multiturn import evaluate_multiturn
    from selfplay.io import write_jsonl
    from selfplay.methods import load_config
    from selfplay.stages.agent_rollout import run_agent_rollout
    from selfplay.stages.rollout import LocalTurnModel, run_rollout

    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = make_sampler("hf", model_name, model_cfg=ModelConfig(dtype=dtype), device="cpu")
    model, tokenizer = load_spin_recipe_model(model_name, sampler.model.dtype)
    fireact = data_dir / "fireact"
    sources = [fireact / "trajs_llama2_7b_150.json", fireact / "hotpotqa_alpaca_200.json",
               data_dir / "agent" / "search_cache.json"]
    questions = _records(fireact / "hotpotqa_alpaca_200.json", agent_questions, "auto")
    problems = _records(data_dir / "gsm8k" / "test_200.jsonl", max(rise_problems, eval_problems), "gsm8k")
    write_jsonl(out_dir / "questions.jsonl", questions)
    write_jsonl(out_dir / "problems.jsonl", problems[:rise_problems])
    agent_cfg = load_config(flags={
        "method": "spin-agent", "agent.task": "hotpotqa", "agent.search": "replay",
        "agent.search_sources": [str(s) for s in sources], "agent.max_steps": max_steps, "agent.retries": 0,
        "agent.temperature": 0.0, "agent.fewshot": str(REPO / "configs" / "prompts" / "react_1shot.txt"),
        "generate.prompt_format": "alpaca", "generate.max_new_tokens": step_tokens})
    rise_cfg = load_config(flags={
        "method": "rise", "rise.env": "gsm8k", "rise.max_turns": 2, "rise.num_samples": [1, 4],
        "generate.max_new_tokens": turn_tokens, "generate.temperature": 1.0, "generate.top_p": 1.0})
    env = ENVS["gsm8k"]

    def ours_agent(n: int, rep: int) -> tuple[Counted, float]:
        counted, target = Counted(sampler), out_dir / "agent_ours"
        shutil.rmtree(target, ignore_errors=True)
        write_jsonl(out_dir / "agent_q.jsonl", questions[:n])
        t0 = time.perf_counter()
        run_agent_rollout(agent_cfg, model_name, out_dir / "agent_q.jsonl", target, sampler=counted)
        return counted, time.perf_counter() - t0

    def ours_rise(n: int, rep: int) -> tuple[Counted, float]:
        counted, target = Counted(sampler), out_dir / "rise_ours"
        shutil.rmtree(target, ignore_errors=True)
        write_jsonl(out_dir / "rise_p.jsonl", problems[:n])
        cfg = load_config(flags={**_flags(rise_cfg), "generate.seed": rep + 1})
        t0 = time.perf_counter()
        run_rollout(cfg, model_name, out_dir / "rise_p.jsonl", target, loaded={"policy": LocalTurnModel(counted, cfg)})
        return counted, time.perf_counter() - t0

    def ours_multiturn(n: int, rep: int) -> tuple[Counted, float]:
        counted = Counted(sampler)
        turn_model = LocalTurnModel(counted, rise_cfg)
        t0 = time.perf_counter()
        evaluate_multiturn(env, turn_model.respond, problems[:n], turns=5, context_window=2, parallel=0,
                           seed=rep + 1, release=turn_model.release)
        return counted, time.perf_counter() - t0

    def measured(ours_fn: Any, anchor_fn: Any, count: int, label: str, anchor_count: int) -> dict[str, Any]:
        ours_fn(max(1, count // 4), -1)  # warm-up, both sides
        anchor_fn(max(1, anchor_count // 4))
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "anchor": []}
        for rep in range(pairs):
            counted, seconds = ours_fn(count, rep)
            runs["ours"].append({"episodes": float(count), "tokens": float(counted.tokens), "seconds": seconds,
                                 "calls": float(counted.calls),
                                 "reused_share": counted.reused / max(1, counted.prompt_tokens)})
            runs["anchor"].append(anchor_fn(anchor_count))
            for name, r in runs.items():
                r[-1]["episodes_per_s"] = r[-1]["episodes"] / r[-1]["seconds"]
                r[-1]["tokens_per_s"] = r[-1]["tokens"] / r[-1]["seconds"]
            console.print(f"[bold]{label}[/] round {rep + 1}/{pairs}: ours {runs['ours'][-1]['episodes_per_s']:.3f} "
                          f"episodes/s, anchor {runs['anchor'][-1]['episodes_per_s']:.3f}")
        return {"runs": runs,
                "episodes_per_s": {a: summarize([r["episodes_per_s"] for r in rs]) for a, rs in runs.items()},
                "tokens_per_s": {a: summarize([r["tokens_per_s"] for r in rs]) for a, rs in runs.items()},
                "ratio_episodes": ratios(runs, "episodes_per_s", "ours", "anchor"),
                "ratio_tokens": ratios(runs, "tokens_per_s", "ours", "anchor"),
                "reused_share": summarize([r["reused_share"] for r in runs["ours"]])}

    render = lambda m: format_prompt(tokenizer, m, "alpaca")  # noqa: E731
    with finish_goes_on():
        agent = load_agent(agent_cfg.agent, agent_cfg.remote)
        results = {"agent": measured(ours_agent, lambda n: fireact_agent(
            model, tokenizer, agent, questions[:n], render=render, max_steps=max_steps, max_new_tokens=step_tokens),
            agent_questions, "agent rollouts", anchor_questions)}
    results |= {
        "rise": measured(ours_rise, lambda n: rise_episodes(
            model, tokenizer, env, problems[:n], max_turns=2, num_samples=[1, 4], max_new_tokens=turn_tokens,
            temperature=1.0, prompt_format="chat", max_repeats=rise_cfg.rise.max_word_repeats),
            rise_problems, "RISE rollouts", rise_problems),
        "multiturn": measured(ours_multiturn, lambda n: sequential_eval(
            model, tokenizer, env, problems[:n], turns=5, context_window=2, max_new_tokens=turn_tokens,
            temperature=1.0, prompt_format="chat"), eval_problems, "sequential evaluation", anchor_eval_problems),
    }
    return {"settings": {"model": model_name, "dtype": str(sampler.model.dtype).replace("torch.", ""),
                         "agent_questions": agent_questions, "anchor_questions": anchor_questions,
                         "anchor_eval_problems": anchor_eval_problems, "finish_ends_episode": False,
                         "max_steps": max_steps, "step_tokens": step_tokens,
                         "rise_problems": rise_problems, "eval_problems": eval_problems, "turn_tokens": turn_tokens,
                         "pairs": pairs, "batch_size": sampler.batch_size, "cache_bytes": sampler.cache_bytes},
            **results}


def _flags(cfg: Any) -> dict[str, Any]:
    """The RISE settings of ``cfg`` as load_config flags (to vary the seed per round)."""
    r, g = cfg.rise, cfg.generate
    return {"method": "rise", "rise.env": r.env, "rise.max_turns": r.max_turns, "rise.num_samples": list(r.num_samples),
            "generate.max_new_tokens": g.max_new_tokens, "generate.temperature": g.temperature, "generate.top_p": g.top_p}
