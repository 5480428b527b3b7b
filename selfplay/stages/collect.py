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
from selfplay.stages.parallel import produce
from selfplay.stages.shards import ShardJob


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

    @property
    def prompts_path(self) -> Path:
        return self.dir / "prompts.jsonl"

    def write_prompts(self) -> Path:
        write_jsonl(self.prompts_path, self.prompts)
        return self.prompts_path


@dataclass
class Collected:
    path: Path  # JSONL of the collected records
    fp: str  # fingerprint of everything that produced it


def collect_references(it: Iteration) -> Collected:
    """Nothing is generated: the iteration's SFT records themselves (SFT trains on their real answers).
    Only the main machine writes them (a follower, or ``selfplay status``, only computes the fingerprint)."""
    path = it.dir / "prompts.jsonl" if it.run.follower else it.write_prompts()
    return Collected(path, fingerprint([r["id"] for r in it.prompts], it.k))


def _sharded(it: Iteration, stage: str, unit: str, fp: str, job: ShardJob, dest: Path) -> Collected:
    """The unit ``iter_k/<unit>``: the sharded ``stage`` over the workers of ``launch`` (every machine does its
    shards), merged into ``dest`` by the main machine; memory released before the next stage loads a model.
    A job that reads the iteration's prompts (``job.data`` = :meth:`Iteration.prompts_path`) writes them first."""
    def work() -> None:
        if job.data == it.prompts_path:
            it.write_prompts()
        produce(stage, it.cfg, job, dest)
        release_memory()

    it.run.ensure(f"iter_{it.k}/{unit}", fp, [job.out, dest], work, every_machine=True)
    return Collected(dest, fp)


def collect_samples(it: Iteration) -> Collected:
    """``generate.n`` samples per prompt from the current model (generate/ shards, generate.jsonl)."""
    # No launch setting in the fingerprint: samples do not depend on how many processes drew them.
    fp = fingerprint(it.model_fp, dataclasses.asdict(it.cfg.generate), [r["id"] for r in it.prompts], it.k)
    return _sharded(it, "generate", "generate", fp, ShardJob(it.prompts_path, it.dir / "generate", it.model),
                    it.dir / "generate.jsonl")


def collect_ranked(it: Iteration) -> Collected:
    """Samples as above, then every prompt's K samples judged by ``rank.judge`` (rank/ shards, rank.jsonl)."""
    samples = collect_samples(it)
    fp = fingerprint(samples.fp, dataclasses.asdict(it.cfg.rank))
    return _sharded(it, "rank", "rank", fp, ShardJob(samples.path, it.dir / "rank"), it.dir / "rank.jsonl")


def collect_turns(it: Iteration) -> Collected:
    """RISE episodes: multi-turn self-correction in the data's answer environment (rollout/ shards,
    rollout.jsonl); problems without a parsable reference answer are dropped."""
    fp = fingerprint(it.model_fp, dataclasses.asdict(it.cfg.generate), dataclasses.asdict(it.cfg.rise),
                     [r["id"] for r in it.prompts], it.k)
    job = ShardJob(it.prompts_path, it.dir / "rollout", it.model, skip_invalid=True)
    return _sharded(it, "rollout", "rollout", fp, job, it.dir / "rollout.jsonl")


def collect_trajectories(it: Iteration) -> Collected:
    """Agent trajectories: ReAct episodes with the tools (trajectories/ shards, trajectories.jsonl, FireAct
    fields)."""
    fp = fingerprint(it.model_fp, dataclasses.asdict(it.cfg.generate), dataclasses.asdict(it.cfg.agent),
                     [r["id"] for r in it.prompts], it.k)
    return _sharded(it, "agent-rollout", "trajectories", fp,
                    ShardJob(it.prompts_path, it.dir / "trajectories", it.model), it.dir / "trajectories.jsonl")


COLLECTORS: dict[str, Callable[[Iteration], Collected]] = {
    "references": collect_references,
    "samples": collect_samples,
    "ranked": collect_ranked,
    "turns": collect_turns,
    "trajectories": collect_trajectories,
}
