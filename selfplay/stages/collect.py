"""Collectors: what one loop iteration gathers with the current model, by the name a method declares.

Each collector runs its units of work in the run directory (resumable, fingerprinted like every unit of
:mod:`selfplay.runs`) and returns the JSONL its method's ``build`` reads, with the fingerprint of that
file's inputs. Methods say which collector they need (``Method.collects``); adding a kind of collection
is one function plus one entry in :data:`COLLECTORS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.config import Config
from selfplay.core.memory import release_memory
from selfplay.io import write_jsonl
from selfplay.runs import RunState, fingerprint


@dataclass
class Iteration:
    """Everything a collector needs about iteration ``k``."""

    k: int
    cfg: Config  # the iteration's config (schedule applied, its own sampling seed)
    dir: Path  # run_dir/iter_k
    run: RunState
    model: str  # the model the iteration starts from
    model_fp: str
    prompts: list[dict[str, Any]]  # the iteration's SFT records {id, messages, reference, meta}

    def write_prompts(self) -> Path:
        path = self.dir / "prompts.jsonl"
        write_jsonl(path, self.prompts)
        return path


@dataclass
class Collected:
    path: Path  # JSONL of the collected records
    fp: str  # fingerprint of everything that produced it


def collect_references(it: Iteration) -> Collected:
    """Nothing is generated: the iteration's SFT records themselves (SFT trains on their real answers).
    Only the main machine writes them (a follower, or ``selfplay status``, only computes the fingerprint)."""
    path = it.dir / "prompts.jsonl" if it.run.follower else it.write_prompts()
    return Collected(path, fingerprint([r["id"] for r in it.prompts], it.k))


def collect_samples(it: Iteration) -> Collected:
    """``generate.n`` samples per prompt from the current model: shards produced by the workers of
    ``launch`` (:mod:`selfplay.stages.parallel`), merged into generate.jsonl by the main machine."""
    from selfplay.stages.generate import merge_shards
    from selfplay.stages.parallel import generate_stage, is_main_machine

    gen_dir, samples = it.dir / "generate", it.dir / "generate.jsonl"
    # No launch setting in the fingerprint: samples do not depend on how many processes drew them.
    fp = fingerprint(it.model_fp, dataclasses.asdict(it.cfg.generate), [r["id"] for r in it.prompts], it.k)

    def work() -> None:
        generate_stage(it.cfg, it.model, it.write_prompts(), gen_dir)
        if is_main_machine(it.cfg):
            merge_shards(gen_dir, samples)
        release_memory()

    it.run.ensure(f"iter_{it.k}/generate", fp, [gen_dir, samples], work, every_machine=True)
    return Collected(samples, fp)


def collect_ranked(it: Iteration) -> Collected:
    """Samples as above, then every prompt's K samples judged by ``rank.judge`` (rank/ shards, rank.jsonl)."""
    from selfplay.stages.parallel import rank_stage

    samples = collect_samples(it)
    rank_dir, rank_path = it.dir / "rank", it.dir / "rank.jsonl"
    fp = fingerprint(samples.fp, dataclasses.asdict(it.cfg.rank))
    it.run.ensure(f"iter_{it.k}/rank", fp, [rank_dir, rank_path],
                  lambda: rank_stage(it.cfg, samples.path, rank_dir, rank_path) and None, every_machine=True)
    release_memory()
    return Collected(rank_path, fp)


def collect_turns(it: Iteration) -> Collected:
    """RISE episodes: multi-turn self-correction in the data's answer environment (rollout.jsonl)."""
    from selfplay.stages.generate import merge_shards
    from selfplay.stages.parallel import is_main_machine, rollout_stage

    out_dir, episodes = it.dir / "rollout", it.dir / "rollout.jsonl"
    fp = fingerprint(it.model_fp, dataclasses.asdict(it.cfg.generate), dataclasses.asdict(it.cfg.rise),
                     [r["id"] for r in it.prompts], it.k)

    def work() -> None:
        rollout_stage(it.cfg, it.model, it.write_prompts(), out_dir, skip_invalid=True)
        if is_main_machine(it.cfg):
            merge_shards(out_dir, episodes)
        release_memory()

    it.run.ensure(f"iter_{it.k}/rollout", fp, [out_dir, episodes], work, every_machine=True)
    return Collected(episodes, fp)


def collect_trajectories(it: Iteration) -> Collected:
    """Agent trajectories: ReAct episodes with the tools (trajectories.jsonl, FireAct fields)."""
    from selfplay.stages.generate import merge_shards
    from selfplay.stages.parallel import agent_rollout_stage, is_main_machine

    out_dir, trajectories = it.dir / "trajectories", it.dir / "trajectories.jsonl"
    fp = fingerprint(it.model_fp, dataclasses.asdict(it.cfg.generate), dataclasses.asdict(it.cfg.agent),
                     [r["id"] for r in it.prompts], it.k)

    def work() -> None:
        agent_rollout_stage(it.cfg, it.model, it.write_prompts(), out_dir)
        if is_main_machine(it.cfg):
            merge_shards(out_dir, trajectories)
        release_memory()

    it.run.ensure(f"iter_{it.k}/trajectories", fp, [out_dir, trajectories], work, every_machine=True)
    return Collected(trajectories, fp)


COLLECTORS: dict[str, Callable[[Iteration], Collected]] = {
    "references": collect_references,
    "samples": collect_samples,
    "ranked": collect_ranked,
    "turns": collect_turns,
    "trajectories": collect_trajectories,
}
