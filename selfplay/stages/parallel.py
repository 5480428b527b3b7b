"""Data-parallel sampling stages: generate, rank and rollouts over ``launch.num_processes`` workers, and
the registry of those stages (:data:`SHARDED_STAGES`) that the worker entry point and the loop read.

Every prompt is independent and every sample is a pure function of (seed, prompt text, sample index), so
the prompts can be cut into shards, each produced by its own process with its own model replica (or vLLM
engine of ``generate.tensor_parallel_size`` GPUs), and merged by the shard/merge code of the stages into
exactly what one process writes. The processes are started by :func:`selfplay.core.launchers.run_workers`
and run :mod:`selfplay.stages.worker`.

Shards are not workers: a directory's shard count is fixed when it is first started (the number of
workers on all machines then) and kept on resume; global worker ``g`` of ``W`` takes shards ``g, g + W,
...``. A rerun with another process count therefore resumes the same files, and nothing done is redone.
On several machines each machine samples its own shards into the shared run directory and the main
machine (``launch.machine_rank`` 0) merges once all of them are complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.config import Config, save_config
from selfplay.core.launchers import local_processes, machine_file, run_workers, several_processes
from selfplay.envs.agent_episodes import load_agent
from selfplay.errors import UserError
from selfplay.progress import console
from selfplay.stages.agent_rollout import agent_rollout_shards, run_agent_rollout
from selfplay.stages.generate import generate_shards, run_generate
from selfplay.stages.rank import merge_rank_shards, rank_shard_count, rank_shards, unfinished_rank_shards
from selfplay.stages.rollout import rollout_shards, run_rollout
from selfplay.stages.shards import ShardJob, merge_shards, shard_count, unfinished_shards

WORKER_MODULE = "selfplay.stages.worker"
POLL_S = 5.0


@dataclass(frozen=True)
class Workers:
    """The data-parallel workers of a sampling stage."""

    total: int  # on all machines
    local: int  # on this machine
    first: int  # global index of this machine's first worker
    devices: int  # GPUs per worker (a vLLM engine's tensor_parallel_size)

    def shards(self, count: int) -> list[list[int]]:
        """The shards (of ``count``) of each local worker: global worker g takes g, g + total, ..."""
        return [list(range(self.first + i, count, self.total)) for i in range(self.local)]


def is_main_machine(cfg: Config) -> bool:
    """The machine that merges shards and keeps the run directory's bookkeeping (rank 0)."""
    return cfg.launch.machine_rank == 0


def sampling_workers(cfg: Config, devices_per_worker: int = 1, parallel: bool = True) -> Workers:
    """Workers for a sampling stage under ``cfg.launch``: one per ``devices_per_worker`` processes of each
    machine. ``parallel=False`` (work that a model replica would not speed up: verifiers, HTTP judges): one
    worker, on the main machine."""
    launch = cfg.launch
    if not parallel or not several_processes(launch):
        return Workers(total=1, local=1 if is_main_machine(cfg) else 0, first=0, devices=devices_per_worker)
    local = local_processes(launch) // devices_per_worker
    if local < 1:
        raise UserError(f"generate.tensor_parallel_size={devices_per_worker} needs that many processes per machine; "
                        f"launch.num_processes={launch.num_processes} over {launch.num_machines} machine(s) gives "
                        f"{local_processes(launch)}")
    return Workers(total=local * launch.num_machines, local=local, first=launch.machine_rank * local,
                   devices=devices_per_worker)


def run_sharded(cfg: Config, stage: str, out_dir: Path, count: int | None, stage_args: list[str],
                in_process: Callable[[list[int], int], None], workers: Workers) -> int:
    """Produce this machine's shards of a sharded stage; returns the shard count.

    ``count``: the count an existing output was started with (None: new, one shard per worker).
    ``in_process(shards, count)`` runs shards here (one local worker); otherwise each local worker is a
    process running ``selfplay.stages.worker STAGE ARGS --shards ... --num-shards count``.
    """
    count = count or workers.total
    mine = [s for s in workers.shards(count) if s]
    if not mine:
        return count
    if workers.local == 1:
        in_process(mine[0], count)
        return count
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / machine_file(cfg.launch, "worker_config.yaml")
    save_config(cfg, config_path)
    console.print(f"{stage}: {len(mine)} worker process(es) on this machine, {count} shard(s) in all")
    run_workers(cfg.launch, WORKER_MODULE,
                [[stage, "--config", str(config_path), *stage_args, "--shards", ",".join(map(str, s)),
                  "--num-shards", str(count)] for s in mine], devices_per_worker=workers.devices)
    return count


def wait_for_machines(cfg: Config, unfinished: Callable[[], list[str]], what: str) -> None:
    """On several machines: wait until every machine's shards are complete in the shared run directory; a
    machine that stops meanwhile ends the wait with an error naming it (:func:`selfplay.liveness.check_peers`)."""
    from selfplay.liveness import check_peers

    if cfg.launch.num_machines == 1:
        return
    last = 0.0
    while problems := unfinished():
        if time.monotonic() - last > 60:
            console.print(f"waiting for the other machines' {what}: {'; '.join(problems[:3])}")
            last = time.monotonic()
        for _ in range(int(POLL_S)):  # look for a stopped machine every second, at the shards every POLL_S
            check_peers()
            time.sleep(1.0)


@dataclass(frozen=True)
class ShardedStage:
    """A stage that writes shards: how to run some of them in this process (one model for all), what an
    existing output's shard count is, what is left unfinished, how to merge, and its workers."""

    name: str  # the worker's subcommand
    what: str  # for messages: "generation"
    run_shards: Callable[[Config, ShardJob, list[int], int], None]
    shard_count: Callable[[ShardJob], int | None]
    unfinished: Callable[[ShardJob, int], list[str]]
    merge: Callable[[ShardJob, int, Path], Path]
    workers: Callable[[Config], Workers]
    # A slice named by generate.data_frac (the anchors' flags): the one shard run here, no workers.
    one_slice: Callable[[Config, ShardJob], Any] | None = None
    # Checked before any model is looked at (e.g. the agent's search key and sources).
    check: Callable[[Config], Any] | None = None


def _sampling_workers(cfg: Config) -> Workers:
    g = cfg.generate
    return sampling_workers(cfg, g.tensor_parallel_size if g.backend == "vllm" else 1)


def _rank_workers(cfg: Config) -> Workers:
    """Judges that run a model locally rank data-parallel; verifiers and HTTP judges gain nothing from more
    processes and rank on the main machine alone."""
    from selfplay.judges import runs_local_model

    return sampling_workers(cfg, parallel=runs_local_model(cfg.rank.judge))


# The prompt-sharded stages share the manifest bookkeeping of selfplay.stages.shards.
_MANIFESTED = {"shard_count": lambda job: shard_count(job.out),
               "unfinished": lambda job, count: unfinished_shards(job.out),
               "merge": lambda job, count, dest: merge_shards(job.out, dest), "workers": _sampling_workers}

SHARDED_STAGES: dict[str, ShardedStage] = {s.name: s for s in (
    ShardedStage("generate", "generation", generate_shards, **_MANIFESTED,
                 one_slice=lambda cfg, job: run_generate(cfg, job.model, job.data, job.out, split=job.split)),
    ShardedStage("rollout", "rollout", rollout_shards, **_MANIFESTED,
                 one_slice=lambda cfg, job: run_rollout(cfg, job.model, job.data, job.out, split=job.split,
                                                        skip_invalid=job.skip_invalid)),
    ShardedStage("agent-rollout", "agent rollout", agent_rollout_shards, **_MANIFESTED,
                 one_slice=lambda cfg, job: run_agent_rollout(cfg, job.model, job.data, job.out, split=job.split),
                 # builds the tools: a missing search key or source fails before any model is looked at
                 check=lambda cfg: load_agent(cfg.agent, cfg.remote)),
    ShardedStage("rank", "rank", rank_shards, lambda job: rank_shard_count(job.out),
                 lambda job, count: unfinished_rank_shards(job.out, job.data, count),
                 lambda job, count, dest: merge_rank_shards(job.out, job.data, count, dest), _rank_workers),
)}


def run_stage(name: str, cfg: Config, job: ShardJob) -> int | None:
    """Run the sharded stage ``name`` under ``cfg.launch``: this machine's shards (in this process, or in
    worker processes), then, on several machines, the wait until every machine's shards are complete.
    Returns the shard count; None when ``generate.data_frac`` named one slice, which runs here alone."""
    stage = SHARDED_STAGES[name]
    if stage.check is not None:
        stage.check(cfg)
    if stage.one_slice is not None and cfg.generate.data_frac is not None:
        stage.one_slice(cfg, job)
        return None

    def here(shards: list[int], count: int) -> None:
        stage.run_shards(cfg, job, shards, count)

    count = run_sharded(cfg, name, job.out, stage.shard_count(job), job.worker_args(), here, stage.workers(cfg))
    wait_for_machines(cfg, lambda: stage.unfinished(job, count), f"{stage.what} shards in {job.out}")
    return count


def produce(name: str, cfg: Config, job: ShardJob, dest: Path) -> Path | None:
    """:func:`run_stage`, then the main machine merges the shards into ``dest`` (returned; None elsewhere)."""
    count = run_stage(name, cfg, job)
    if not is_main_machine(cfg):
        return None
    if count is None:
        raise UserError(f"{name}: generate.data_frac names one slice; its shards cannot be merged here")
    return SHARDED_STAGES[name].merge(job, count, dest)
