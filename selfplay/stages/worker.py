"""Entry point of a stage re-launched in other processes (``python -m selfplay.stages.worker STAGE ...``).

The launcher (:mod:`selfplay.core.launchers`) starts this module under ``accelerate launch``; it reads the
config file the parent wrote and runs the stage in this process. Kept apart from the CLI so stages never
depend on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfplay.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfplay.stages.worker")
    sub = parser.add_subparsers(dest="stage", required=True)
    train = sub.add_parser("train", help="run the train stage in this process")
    train.add_argument("--config", required=True, type=Path)
    train.add_argument("--model", required=True)
    train.add_argument("--data", required=True, type=Path)
    train.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    from selfplay.methods import load_config

    try:
        cfg = load_config(args.config)
        from selfplay.stages.train import run_train

        run_train(cfg, args.model, args.data, args.out)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
