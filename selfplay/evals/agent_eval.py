"""Agent evaluation: greedy ReAct episodes with the tools, scored by the task (``selfplay eval agent``).

Reports exact match and F1 of the final answers (unfinished episodes score 0, as in the anchor), steps per
episode, the share of episodes that called ``finish`` within ``agent.max_steps``, tool errors, invalid
actions and approximate tool results (a replay search's nearest recorded query) per episode. Per-episode trajectories are saved in the FireAct form.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from selfplay.config import Config


def evaluate_agent(cfg: Config, sampler: Any, records: list[dict[str, Any]], out_dir: Path | None = None) -> dict:
    """Greedy (temperature 0) episodes for ``records``; metrics, and ``out_dir/agent.jsonl`` when given."""
    from selfplay.core.samplers import format_prompt
    from selfplay.envs.agent_episodes import (agent_info, load_agent, new_episodes, play_agent_episodes, sampler_steps,
                                              trajectory_row)
    from selfplay.io import write_json, write_jsonl
    from selfplay.progress import progress_bar

    agent = load_agent(cfg.agent, cfg.remote)
    one = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, samples=1))
    done: list[Any] = []
    episodes = new_episodes(records, lambda m: format_prompt(sampler.tokenizer, m, cfg.generate.prompt_format),
                            fewshot=agent.fewshot, samples=1, seed=cfg.generate.seed)
    with progress_bar(f"eval agent ({agent.task.name})", total=len(episodes)) as bar:
        def finished(episode: Any) -> None:
            done.append(episode)
            bar.advance()

        play_agent_episodes(agent, sampler_steps(sampler, cfg.generate), episodes, one.agent, finished,
                            temperature=0.0)
    n = max(1, len(done))
    # Per episode (one per question): what the metrics average, kept for intervals and paired changes.
    outcomes = {ep.record["id"]: {"em": float(ep.info.get("em", 0.0)), "f1": float(ep.info.get("f1", 0.0)),
                                  "steps": float(len(ep.steps)), "finished": float(ep.finished)} for ep in done}
    metrics = {"task": agent.task.name, "search": cfg.agent.search, "episodes": len(done),
               "em": sum(ep.info.get("em", 0.0) for ep in done) / n,
               "f1": sum(ep.info.get("f1", 0.0) for ep in done) / n,
               "steps": sum(len(ep.steps) for ep in done) / n,
               "finished": sum(ep.finished for ep in done) / n,
               "tool_errors": sum(ep.tool_errors for ep in done) / n,
               "invalid_actions": sum(ep.invalid_actions for ep in done) / n,
               "approximate_results": sum(ep.approximate_results for ep in done) / n,
               "stats": outcome_intervals(list(outcomes.values()))}
    if out_dir is not None:
        info = agent_info(one, "evaluated", agent)
        write_jsonl(Path(out_dir) / "agent.jsonl", [trajectory_row(ep.record, [ep], info) for ep in done])
        write_json(Path(out_dir) / "agent.json", metrics)
    return {**metrics, "outcomes": outcomes}


def outcome_intervals(outcomes: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """95% intervals over episodes: Wilson for EM and finished (0/1), bootstrap for F1 and steps."""
    from selfplay.evals.stats import bootstrap_mean, proportion_interval

    if not outcomes:
        return {}
    kinds = {"em": proportion_interval, "f1": bootstrap_mean, "steps": bootstrap_mean, "finished": proportion_interval}
    return {key: kind([o[key] for o in outcomes]).as_dict() for key, kind in kinds.items()}


def print_agent_metrics(metrics: dict[str, Any], title: str = "agent evaluation") -> None:
    from rich.table import Table

    from selfplay.progress import console

    from selfplay.evals.stats_format import with_interval

    stats = metrics.get("stats", {})
    console.print(f"{title} ({metrics['task']}, search {metrics['search']}, n = {metrics['episodes']} episodes; "
                  "95% intervals: Wilson for EM and finished, bootstrap for F1 and steps)", style="bold",
                  highlight=False)
    table = Table()
    for name in ("EM", "F1", "steps/episode", "finished", "tool errors/episode", "invalid actions/episode"):
        table.add_column(name, justify="right")
    table.add_row(*(with_interval(metrics[k], stats.get(k), fmt, "\n")
                    for k, fmt in (("em", "{:.3f}"), ("f1", "{:.3f}"), ("steps", "{:.2f}"), ("finished", "{:.2f}"))),
                  f"{metrics['tool_errors']:.2f}", f"{metrics['invalid_actions']:.2f}")
    console.print(table)
