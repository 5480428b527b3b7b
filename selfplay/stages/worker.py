"""Entry point of a stage run in another process (``python -m selfplay.stages.worker STAGE ...``).

The launchers (:mod:`selfplay.core.launchers`) start this module: under ``accelerate launch`` for
``train``, as plain data-parallel workers for the sharded stages of
:data:`selfplay.stages.parallel.SHARDED_STAGES` (generate, rank, rollout, agent-rollout; each given its
shards). It reads the config file the parent wrote and runs the stage's work in this process. Kept apart
from the CLI so stages never depend on it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from selfplay.config import Config
from selfplay.errors import UserError, disk_full_error
from selfplay.stages.parallel import SHARDED_STAGES
from selfplay.stages.shards import ShardJob


def _shards(text: str) -> list[int]:
    return [int(k) for k in text.split(",") if k.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfplay.stages.worker")
    sub = parser.add_subparsers(dest="stage", required=True)
    train = sub.add_parser("train", help="run the train stage in this (accelerate-launched) process")
    train.add_argument("--model", required=True)
    train.add_argument("--val", type=Path, default=None, help="validation records (train.eval_every)")
    for name in SHARDED_STAGES:  # the arguments of a ShardJob (ShardJob.worker_args)
        p = sub.add_parser(name, help=f"run shards of the {name} stage in this process")
        p.add_argument("--shards", required=True, type=_shards, help="comma-separated shard indices")
        p.add_argument("--num-shards", required=True, type=int)
        p.add_argument("--model", default="")
        p.add_argument("--split", default="train")
        p.add_argument("--skip-invalid", action="store_true")
    for p in sub.choices.values():
        p.add_argument("--config", required=True, type=Path)
        p.add_argument("--data", required=True, type=Path)
        p.add_argument("--out", required=True, type=Path)
    return parser


def _run(cfg: Config, args: argparse.Namespace) -> None:
    """The stage's work in this process: training, or the given shards of a sharded stage."""
    if args.stage not in SHARDED_STAGES:  # the one other entry: train under accelerate launch
        from selfplay.stages.train import run_train

        run_train(cfg, args.model, args.data, args.out, args.val)
        return
    job = ShardJob(args.data, args.out, args.model, args.split, args.skip_invalid)
    SHARDED_STAGES[args.stage].run_shards(cfg, job, args.shards, args.num_shards)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from selfplay.models import pause_full_collections
    from selfplay.threads import setup

    setup()  # this worker's share of the threads (set by its launcher), before torch is imported
    pause_full_collections()  # as the CLI: until the first model, whose imports are then frozen
    from selfplay.core.launchers import exit_with_parent
    from selfplay.methods import load_config
    from selfplay.progress import quiet_libraries

    quiet_libraries()  # as the CLI does: one progress display, no known library noise

    exit_with_parent()  # a killed run must not leave this process appending to the files its rerun resumes
    try:
        _run(load_config(args.config), args)
    except Exception as e:  # as the CLI: a user error or a full disk is one line, anything else a traceback
        error = e if isinstance(e, UserError) else disk_full_error(e)
        if error is None and _lost_a_peer(e):
            # Another training process died and took the collective with it: it is the one to report (the
            # launcher names it); this one only says why it stops too.
            said = next((text for text in _PEER_GONE if text in str(e)), type(e).__name__)
            print(f"training process rank {os.environ.get('RANK', '?')}: stopping, another process of the run is "
                  f"gone ({said})", file=sys.stderr)
            return 1
        if error is None:
            raise
        print(f"Error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


# What a collective says when a peer process is gone (gloo over TCP, NCCL, the c10d store).
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted",
              "DistNetworkError", "Socket Timeout", "recvValue failed", "Connection refused")


def _lost_a_peer(e: BaseException) -> bool:
    """Whether ``e`` in a launched training process is a collective failing because another process died."""
    if "LOCAL_RANK" not in os.environ:
        return False
    import torch.distributed as dist

    return isinstance(e, getattr(dist, "DistError", ())) or any(text in str(e) for text in _PEER_GONE)


if __name__ == "__main__":
    sys.exit(main())
