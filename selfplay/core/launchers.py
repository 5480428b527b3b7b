"""Where a stage runs: in this process, or re-launched under ``accelerate launch`` as several processes.

Launchers know nothing about methods or commands: :func:`run_launched` runs a Python module (a stage's
worker entry point, e.g. ``selfplay.stages.worker``) with the arguments the caller built. The training
code itself is plain accelerate, so DDP/FSDP/DeepSpeed come from the accelerate config file
(``launch.accelerate_config``) and need no change in the method code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from selfplay.config import LaunchConfig
from selfplay.errors import UserError


def under_distributed_launcher() -> bool:
    """True inside a process started by accelerate/torchrun (they set LOCAL_RANK / WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def accelerate_command(launch: LaunchConfig, module: str, args: list[str]) -> list[str]:
    """The ``accelerate launch`` command line that runs ``python -m module args``."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise UserError("launch.backend=accelerate needs the `accelerate` package (pip install accelerate).")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config:
        if not Path(launch.accelerate_config).is_file():
            raise UserError(f"launch.accelerate_config: file not found: {launch.accelerate_config}")
        cmd += ["--config_file", launch.accelerate_config]
    cmd += ["--num_processes", str(launch.num_processes)]
    if launch.deepspeed_config:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", launch.deepspeed_config]
    import torch

    if not torch.cuda.is_available():
        cmd += ["--cpu"]
    return cmd + ["-m", module, *args]


def run_launched(launch: LaunchConfig, module: str, args: list[str]) -> None:
    """Run ``module`` under accelerate and wait; a failure is reported with its exit code."""
    cmd = accelerate_command(launch, module, args)
    env = dict(os.environ, SELFPLAY_LAUNCHED="1")
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise UserError(f"`accelerate launch` failed with exit code {proc.returncode}: {' '.join(cmd)}")
