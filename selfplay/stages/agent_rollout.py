"""Agent rollouts: ReAct episodes with tools, batched across questions (ReinholdM/SPIN ``generation_fireact.py``).

Each step every live episode samples ``Thought: ... Action: ...`` until ``"\\nObservation:"`` (one batched
sampling call for all of them). A step with no ``Action: `` is sampled again up to ``agent.retries`` times
and then becomes ``Thought: failed / Action: finish[]``; the search calls of a step run concurrently;
``finish[a]`` ends the episode with ``Observation: Episode finished, reward = {r}``; an episode is cut
after ``agent.max_steps`` steps. Model output is never executed: an action is only ever parsed as
``tool[argument]`` and handed to a tool that knows it.

Differences from the anchor, on purpose: a retry keeps the ``"\\nObservation:"`` stop (the anchor's retry
had none and could invent observations inside the action), and greedy evaluation retries at
``agent.temperature`` (a greedy retry would repeat itself).

Output rows (``{id, question, gt, reference, steps, finished, tool_errors, invalid_actions, sampler,
reward, em, f1, pred, prompt, traj, traj_by_line}``) carry the FireAct/anchor trajectory fields, so our
FireAct reader reads them back; ``samples`` holds every trajectory when ``agent.samples`` > 1.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.config import Config
from selfplay.envs.react import (
    FAILED_STEP,
    FINISHED,
    OBSERVATION_STOP,
    Step,
    parse_action,
    render_steps,
    split_thought_action,
)
from selfplay.envs.search import SearchFn
from selfplay.envs.tasks import Task as AgentTask
from selfplay.envs.tasks import gold_answer
from selfplay.errors import UserError
from selfplay.io import JsonlAppender

if TYPE_CHECKING:
    from selfplay.stages.generate import ShardPlan

Messages = list[dict[str, str]]


@dataclass
class AgentEpisode:
    """One trajectory being played."""

    record: dict[str, Any]
    prompt: str  # the formatted prompt the trajectory continues
    messages: Messages  # the prompt as chat turns (the training record's prompt)
    seed: int
    steps: list[Step] = field(default_factory=list)
    finished: bool = False
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    tool_errors: int = 0
    invalid_actions: int = 0
    retries: int = 0

    def text(self) -> str:
        return self.prompt + render_steps(self.steps)

    def to_json(self) -> dict[str, Any]:
        traj = self.text()
        return {"reward": bool(self.reward), "em": self.info.get("em", 0.0), "f1": self.info.get("f1", 0.0),
                "gt": self.info.get("gt", ""), "pred": self.info.get("pred", ""), "prompt": self.messages,
                "traj": traj, "traj_by_line": traj.split("\n"), "steps": [vars(s) for s in self.steps],
                "finished": self.finished, "num_steps": len(self.steps), "tool_errors": self.tool_errors,
                "invalid_actions": self.invalid_actions, "retries": self.retries}


def question_messages(record: dict[str, Any], fewshot: str) -> Messages:
    """The trajectory's prompt as chat turns: the record's turns, a few-shot prompt before the question."""
    messages = [dict(m) for m in record["messages"]]
    if fewshot:
        messages[-1]["content"] = f"{fewshot.rstrip()}\n\n{messages[-1]['content']}"
    return messages


def _sample_steps(sampler: Any, episodes: list[AgentEpisode], cfg: Config, temperature: float,
                  attempt: int) -> list[str]:
    """One step text per episode (what follows ``Thought:``), each episode on its own seed."""
    out: list[str] = [""] * len(episodes)
    by_seed: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_seed.setdefault(ep.seed + 7919 * attempt, []).append(i)
    for seed, idx in by_seed.items():
        texts = sampler.generate([episodes[i].text() + "Thought:" for i in idx], n=1, temperature=temperature,
                                 top_p=cfg.generate.top_p, max_new_tokens=cfg.generate.max_new_tokens, seed=seed,
                                 stop=[OBSERVATION_STOP], progress=False)
        for i, (text,) in zip(idx, texts):
            out[i] = text
    return out


def _next_steps(sampler: Any, episodes: list[AgentEpisode], cfg: Config, temperature: float) -> list[tuple[str, str]]:
    """(thought, action) per episode, resampling steps without an action up to ``agent.retries`` times."""
    parsed: list[tuple[str, str] | None] = [None] * len(episodes)
    todo = list(range(len(episodes)))
    for attempt in range(cfg.agent.retries + 1):
        temp = temperature if attempt == 0 else max(temperature, cfg.agent.temperature)
        for i, text in zip(todo, _sample_steps(sampler, [episodes[i] for i in todo], cfg, temp, attempt)):
            parsed[i] = split_thought_action(text)
        if attempt:
            for i in todo:
                episodes[i].retries += 1
        todo = [i for i in todo if parsed[i] is None]
        if not todo:
            break
    failed = split_thought_action(FAILED_STEP)
    return [p if p is not None else failed for p in parsed]  # type: ignore[misc]


def play_agent_episodes(task: AgentTask, search: SearchFn, sampler: Any, episodes: list[AgentEpisode], cfg: Config,
                        on_done: Any, temperature: float) -> None:
    """Play ``episodes`` step by step, all together; ``on_done(episode)`` fires as each one ends."""
    live = list(episodes)
    for _ in range(cfg.agent.max_steps):
        if not live:
            break
        steps = [Step(t, a) for t, a in _next_steps(sampler, live, cfg, temperature)]
        searches = {i: parse_action(s.action)[1] for i, s in enumerate(steps)
                    if parse_action(s.action) and parse_action(s.action)[0] == "search"}
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = dict(zip(searches, pool.map(search, searches.values())))
        still = []
        for i, (ep, step) in enumerate(zip(live, steps)):
            action = parse_action(step.action)
            if i in results:
                step.observation = results[i].text
                ep.tool_errors += results[i].error
            elif action and action[0] == "finish":
                ep.reward, ep.info = task.score(action[1], gold_answer(ep.record) or "")
                ep.finished = True
                step.observation = FINISHED.format(reward=bool(ep.reward))
            else:
                ep.invalid_actions += 1
                step.observation = f"Invalid action: {step.action[:200]}. Use search[query] or finish[answer]."
            ep.steps.append(step)
            if ep.finished:
                on_done(ep)
            else:
                still.append(ep)
        live = still
    for ep in live:  # out of steps: unfinished, reward 0 (the anchor counts them as failures)
        ep.info = task.score("", gold_answer(ep.record) or "")[1]
        ep.reward = 0.0
        on_done(ep)


def trajectory_row(record: dict[str, Any], episodes: list[AgentEpisode], info: dict[str, Any]) -> dict[str, Any]:
    """The output line of one question: its first trajectory's anchor fields, all of them under ``samples``."""
    row = {"id": record["id"], "question": record["messages"][-1]["content"], "gt": gold_answer(record) or "",
           "reference": record.get("reference"), **episodes[0].to_json(), "sampler": info}
    row["gt"] = episodes[0].info.get("gt", row["gt"])
    if len(episodes) > 1:
        row["samples"] = [ep.to_json() for ep in episodes]
    if record.get("meta"):
        row["meta"] = record["meta"]
    return row


def agent_info(cfg: Config, model: str) -> dict[str, Any]:
    a, g = cfg.agent, cfg.generate
    return {"kind": "agent", "model": model, "task": a.task, "search": a.search, "max_steps": a.max_steps,
            "retries": a.retries, "temperature": a.temperature, "samples": a.samples, "fewshot": a.fewshot,
            "top_p": g.top_p, "max_new_tokens": g.max_new_tokens, "seed": g.seed, "prompt_format": g.prompt_format}


def load_tools(cfg: Config) -> tuple[AgentTask, SearchFn, str]:
    """The task, the search backend and the few-shot text, all checked before any model is loaded."""
    from selfplay.envs.tasks import get_task
    from selfplay.envs.search import make_search

    fewshot = ""
    if cfg.agent.fewshot:
        path = Path(cfg.agent.fewshot)
        if not path.is_file():
            raise UserError(f"agent.fewshot: file not found: {path}")
        fewshot = path.read_text(encoding="utf-8")
    return get_task(cfg.agent.task), make_search(cfg.agent.search, cfg.agent.search_sources, cfg.agent.search_cache), \
        fewshot


def new_episodes(records: list[dict[str, Any]], tok: Any, cfg: Config, fewshot: str) -> list[AgentEpisode]:
    """``agent.samples`` fresh episodes per record (sample j on seed + j)."""
    from selfplay.core.samplers import format_prompt

    out = []
    for rec in records:
        messages = question_messages(rec, fewshot)
        prompt = format_prompt(tok, messages, cfg.generate.prompt_format)
        out += [AgentEpisode(rec, prompt, messages, cfg.generate.seed + 104729 * j) for j in range(cfg.agent.samples)]
    return out


def run_agent_rollout(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train",
                      shard: tuple[int, int] | None = None, sampler: Any | None = None) -> Path:
    """Play ``agent.samples`` trajectories per question of one shard of ``data`` into ``out_dir``."""
    from selfplay.stages.generate import open_shard

    task, search, fewshot = load_tools(cfg)
    info = agent_info(cfg, model)
    with open_shard(cfg, model, data, out_dir, info, split=split, shard=shard, ids=None,
                    check_model=sampler is None, stage="agent rollout") as plan:
        if plan.todo:
            _play_into(plan, task, search, fewshot, info, sampler, cfg, model)
    return plan.path


def _play_into(plan: ShardPlan, task: AgentTask, search: SearchFn, fewshot: str, info: dict[str, Any],
               sampler: Any | None, cfg: Config, model: str) -> None:
    """Play the shard's remaining questions, appending each question's row when its trajectories end."""
    from selfplay.progress import console
    from selfplay.stages.generate import load_sampler
    from selfplay.stages.progress import progress_bar

    sampler = sampler or load_sampler(cfg, model, plan.label)
    chunk = max(1, cfg.generate.batch_size) * 2
    totals = {"reward": 0.0, "done": 0}
    with JsonlAppender(plan.path) as out, progress_bar(f"{plan.label} ({task.name})", total=plan.total,
                                                       completed=plan.total - len(plan.todo)) as bar:
        for start in range(0, len(plan.todo), chunk):
            records = plan.todo[start:start + chunk]
            finished: dict[str, list[AgentEpisode]] = {}

            def done(ep: AgentEpisode) -> None:
                group = finished.setdefault(ep.record["id"], [])
                group.append(ep)
                if len(group) == cfg.agent.samples:
                    group.sort(key=lambda e: e.seed)
                    out.write(trajectory_row(ep.record, group, info))
                    totals["reward"] += group[0].reward
                    totals["done"] += 1
                    bar.advance()

            play_agent_episodes(task, search, sampler, new_episodes(records, sampler.tokenizer, cfg, fewshot), cfg,
                                done, cfg.agent.temperature)
    console.print(f"{plan.label}: {totals['done']} questions, EM {totals['reward'] / max(1, totals['done']):.3f} "
                  f"-> {plan.path}")


def agent_rollout_shards(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str, shards: list[int],
                         num_shards: int) -> None:
    """Play shards ``shards`` of ``num_shards`` in this process, with one sampler for all of them."""
    from selfplay.stages.generate import with_one_sampler

    with_one_sampler(cfg, model, "agent rollout", shards, num_shards, lambda shard, sampler: run_agent_rollout(
        cfg, model, data, out_dir, split=split, shard=shard, sampler=sampler))
