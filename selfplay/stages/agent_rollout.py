"""The agent rollout stage: ReAct trajectories with tools for every question of one shard, resumable.

The episodes themselves are :mod:`selfplay.envs.agent_episodes` (tools, retries, scoring); this stage feeds
them the iteration's model at ``agent.temperature``, ``agent.samples`` trajectories per question, and
appends each question's row to its shard file as soon as its trajectories end, so a killed rollout
resumes at the first unfinished question.

Output rows (``{id, question, gt, reference, steps, finished, tool_errors, invalid_actions, dropped_steps,
approximate_results, sampler, reward, em, f1, pred, prompt, traj, traj_by_line}``) carry the FireAct/anchor trajectory fields, so our
FireAct reader reads them back; ``samples`` holds every trajectory when ``agent.samples`` > 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.config import Config
from selfplay.core.samplers import batch_size_for
from selfplay.envs.agent_episodes import (
    Agent,
    AgentEpisode,
    agent_info,
    load_agent,
    new_episodes,
    play_agent_episodes,
    sampler_steps,
    trajectory_row,
)
from selfplay.io import JsonlAppender

if TYPE_CHECKING:
    from selfplay.stages.shards import ShardJob, ShardPlan


def run_agent_rollout(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train",
                      shard: tuple[int, int] | None = None, sampler: Any | None = None) -> Path:
    """Play ``agent.samples`` trajectories per question of one shard of ``data`` into ``out_dir``."""
    from selfplay.stages.shards import open_shard

    agent = load_agent(cfg.agent, cfg.remote)
    info = agent_info(cfg, model, agent)
    with open_shard(cfg, model, data, out_dir, info, split=split, shard=shard, ids=None,
                    check_model=sampler is None, stage="agent rollout") as plan:
        if plan.todo:
            _play_into(plan, agent, info, sampler, cfg, model)
    return plan.path


def _play_into(plan: ShardPlan, agent: Agent, info: dict[str, Any], sampler: Any | None, cfg: Config,
               model: str) -> None:
    """Play the shard's remaining questions, appending each question's row when its trajectories end."""
    from selfplay.core.samplers import format_prompt
    from selfplay.progress import console, progress_bar
    from selfplay.stages.shards import load_sampler

    sampler = sampler or load_sampler(cfg, model, plan.label)
    respond = sampler_steps(sampler, cfg.generate)
    chunk = batch_size_for(cfg.generate.batch_size) * 2
    totals = {"reward": 0.0, "done": 0, "approximate": 0}
    with JsonlAppender(plan.path) as out, progress_bar(f"{plan.label} ({agent.task.name})", total=plan.total,
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
                    totals["approximate"] += sum(e.approximate_results for e in group)
                    bar.advance()

            episodes = new_episodes(records, lambda m: format_prompt(sampler.tokenizer, m, cfg.generate.prompt_format),
                                    fewshot=agent.fewshot, samples=cfg.agent.samples, seed=cfg.generate.seed)
            play_agent_episodes(agent, respond, episodes, cfg.agent, done, cfg.agent.temperature)
    # Observations a replay search answered with another, similar recorded query (never recorded: no exact one).
    approximate = f", {totals['approximate']} approximate tool results" if totals["approximate"] else ""
    console.print(f"{plan.label}: {totals['done']} questions, EM {totals['reward'] / max(1, totals['done']):.3f}"
                  f"{approximate} -> {plan.path}")


def agent_rollout_shards(cfg: Config, job: ShardJob, shards: list[int], num_shards: int) -> None:
    """Play shards ``shards`` of ``num_shards`` of ``job`` in this process, with one sampler for all of them."""
    from selfplay.stages.shards import with_one_sampler

    with_one_sampler(cfg, job.model, "agent rollout", shards, num_shards, lambda shard, sampler: run_agent_rollout(
        cfg, job.model, job.data, job.out, split=job.split, shard=shard, sampler=sampler))
