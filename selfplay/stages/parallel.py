"""Data-parallel sampling stages: generate, rank and rollouts over ``launch.num_processes`` workers.

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
from selfplay.errors import UserError
from selfplay.progress import console

WORKER_MODULE = "selfplay.stages.worker"
POLL_S = 5.0


class OnFirstUse:
    """Stands in for a sampler or judge and loads it on first use, so that a worker given several shards
    loads its model once and a worker whose shards are all finished loads none."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load, self._loaded = load, None

    def __getattr__(self, name: str) -> Any:
        if self._loaded is None:
            self._loaded = self._load()
        return getattr(self._loaded, name)


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
    """On several machines: wait until every machine's shards are complete in the shared run directory."""
    if cfg.launch.num_machines == 1:
        return
    last = 0.0
    while problems := unfinished():
        if time.monotonic() - last > 60:
            console.print(f"waiting for the other machines' {what}: {'; '.join(problems[:3])}")
            last = time.monotonic()
        time.sleep(POLL_S)


def _sample_sharded(cfg: Config, stage: str, what: str, out_dir: Path, stage_args: list[str],
                    here: Callable[[list[int], int], None]) -> None:
    """A sampling stage's shards over ``cfg.launch`` workers (``here`` runs shards in this process), then the
    wait for the other machines' shards of ``what``."""
    from selfplay.stages.generate import shard_count, unfinished_shards

    g = cfg.generate
    workers = sampling_workers(cfg, g.tensor_parallel_size if g.backend == "vllm" else 1)
    run_sharded(cfg, stage, out_dir, shard_count(out_dir), stage_args, here, workers)
    wait_for_machines(cfg, lambda: unfinished_shards(out_dir), f"{what} shards in {out_dir}")


def _io_args(model: str, data: str | Path, out_dir: Path, split: str) -> list[str]:
    return ["--model", model, "--data", str(data), "--out", str(out_dir), "--split", split]


def generate_stage(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train") -> None:
    """The generate stage under ``cfg.launch``: shards in ``out_dir`` (join them with ``merge_shards``).

    An explicit ``generate.data_frac`` generates that one slice here, as the anchors' flags did.
    """
    from selfplay.stages.generate import generate_shards, run_generate

    if cfg.generate.data_frac is not None:
        run_generate(cfg, model, data, out_dir, split=split)
        return

    def here(shards: list[int], count: int) -> None:
        generate_shards(cfg, model, data, out_dir, split=split, shards=shards, num_shards=count)

    _sample_sharded(cfg, "generate", "generation", out_dir, _io_args(model, data, out_dir, split), here)


def rollout_stage(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train",
                  skip_invalid: bool = False) -> None:
    """RISE rollouts under ``cfg.launch``: shards of episodes in ``out_dir`` (joined by ``merge_shards``)."""
    from selfplay.stages.rollout import rollout_shards

    def here(shards: list[int], count: int) -> None:
        rollout_shards(cfg, model, data, out_dir, split=split, shards=shards, num_shards=count,
                       skip_invalid=skip_invalid)

    _sample_sharded(cfg, "rollout", "rollout", out_dir,
                    _io_args(model, data, out_dir, split) + (["--skip-invalid"] if skip_invalid else []), here)


def agent_rollout_stage(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train") -> None:
    """Agent trajectories under ``cfg.launch``: shards of questions in ``out_dir`` (joined by ``merge_shards``)."""
    from selfplay.envs.agent_episodes import load_agent
    from selfplay.stages.agent_rollout import agent_rollout_shards

    load_agent(cfg.agent)  # a missing search key or source fails here, before any model is looked at

    def here(shards: list[int], count: int) -> None:
        agent_rollout_shards(cfg, model, data, out_dir, split=split, shards=shards, num_shards=count)

    _sample_sharded(cfg, "agent-rollout", "agent rollout", out_dir, _io_args(model, data, out_dir, split), here)


def rank_stage(cfg: Config, samples: Path, shard_dir: Path, dest: Path) -> Path | None:
    """Judge ``samples`` under ``cfg.launch`` into shards in ``shard_dir``, merged into ``dest`` by the main
    machine (returned; None on the other machines). Judges that run a model locally rank data-parallel;
    verifiers and HTTP judges gain nothing from more processes and rank on the main machine alone."""
    from selfplay.judges.base import runs_local_model
    from selfplay.stages.rank import merge_rank_shards, rank_shard_count, rank_shards

    workers = sampling_workers(cfg, parallel=runs_local_model(cfg.rank.judge))

    def here(shards: list[int], count: int) -> None:
        rank_shards(cfg, samples, shard_dir, shards=shards, num_shards=count)

    count = run_sharded(cfg, "rank", shard_dir, rank_shard_count(shard_dir),
                        ["--data", str(samples), "--out", str(shard_dir)], here, workers)
    if not is_main_machine(cfg):
        return None
    from selfplay.stages.rank import unfinished_rank_shards

    wait_for_machines(cfg, lambda: unfinished_rank_shards(shard_dir, samples, count), f"rank shards in {shard_dir}")
    return merge_rank_shards(shard_dir, samples, count, dest)
