"""Allowed ranges of the numeric config keys, and the launch settings checked against each other: both
checked when the config is resolved.

Why at resolution: every command resolves its config first, so ``--n 0`` or ``--temperature -1`` is refused
before it reads data, loads a model or creates an output (a sampler would refuse them too, but only after
the output directory exists).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from selfplay.errors import ConfigError

# Allowed values of numeric keys, checked when the config is resolved: before any command reads data,
# loads a model or creates an output. (lower, lower inclusive, upper, upper inclusive); None = unbounded.
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "data.num": (1, True, None, False),
    "data.eval_num": (1, True, None, False),
    "data.val_num": (0, True, None, False),
    "generate.n": (1, True, None, False),
    "generate.temperature": (0, True, None, False),
    "generate.top_p": (0, False, 1, True),
    "generate.max_new_tokens": (1, True, None, False),
    "generate.batch_size": (1, True, None, False),
    "generate.tensor_parallel_size": (1, True, None, False),
    "generate.num_fracs": (1, True, None, False),
    "generate.frac_len": (1, True, None, False),
    "generate.data_frac": (0, True, None, False),
    "generate.gpu_memory_utilization": (0, False, 1, True),
    "rank.batch_size": (1, True, None, False),
    "train.lr": (0, True, None, False),
    "train.max_steps": (1, True, None, False),
    "train.epochs": (0, False, None, False),
    "train.warmup_ratio": (0, True, 1, True),
    "train.warmup_steps": (0, True, None, False),
    "train.weight_decay": (0, True, None, False),
    "train.batch_size": (1, True, None, False),
    "train.grad_accum": (1, True, None, False),
    "train.reference_batch_size": (1, True, None, False),
    "train.max_length": (2, True, None, False),
    "train.max_prompt_length": (1, True, None, False),
    "train.logging_steps": (1, True, None, False),
    "train.mmap_threshold": (4096, True, 32 << 20, True),  # a page .. glibc's maximum (32 MiB on 64-bit)
    "train.save_steps": (0, True, None, False),
    "train.label_smoothing": (0, True, 0.5, True),
    "train.gpo_clamp": (0, False, None, False),
    "loop.iters": (0, True, None, False),
    "loop.prompts_per_iter": (1, True, None, False),
    "loop.patience": (0, True, None, False),
    "loop.stop_patience": (0, True, None, False),
    "eval.max_new_tokens": (1, True, None, False),
    "eval.batch_size": (1, True, None, False),
    "eval.num_samples": (0, True, None, False),
    "remote.timeout": (0, False, None, False),
    "remote.max_retries": (0, True, None, False),
    "remote.backoff": (0, True, None, False),
    "remote.search_timeout": (0, False, None, False),
    "remote.search_retries": (0, True, None, False),
    "remote.min_usable": (0, True, 1, True),
    "launch.num_processes": (1, True, None, False),
    "launch.num_machines": (1, True, None, False),
    "launch.machine_rank": (0, True, None, False),
    "launch.heartbeat_timeout": (0, False, None, False),
}


# Values outside the range that mean "not set" (train.max_steps: -1 = as many as the epochs make). Any other
# value below the range is refused: a training limit of 0 or -5 used to mean "no limit" without a word.
SENTINELS: dict[str, tuple[Any, str]] = {"train.max_steps": (-1, "no limit")}


def check_ranges(cfg: Any, where: str = "") -> None:
    """ConfigError naming the first key in :data:`RANGES` whose value is outside its range (None = unset)."""
    tree = dataclasses.asdict(cfg)
    for key, (low, low_in, high, high_in) in RANGES.items():
        section, name = key.split(".")
        value = tree[section][name]
        if value is None or (key in SENTINELS and value == SENTINELS[key][0]):
            continue
        if (low is not None and (value < low if low_in else value <= low)) or \
                (high is not None and (value > high if high_in else value >= high)):
            left = "" if low is None else f"{'[' if low_in else '('}{low:g}"
            right = "" if high is None else f"{high:g}{']' if high_in else ')'}"
            allowed = f"in {left}, {right}" if low is not None and high is not None else \
                (f"{'>=' if low_in else '>'} {low:g}" if low is not None else f"{'<=' if high_in else '<'} {high:g}")
            if key in SENTINELS:
                allowed += f" (or {SENTINELS[key][0]}: {SENTINELS[key][1]})"
            raise ConfigError(f"config key '{key}' must be {allowed}, got {value}{where}")


def check_optimizer(train: Any) -> None:
    """AdamW's betas: two numbers in [0, 1)."""
    betas = train.adam_betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"config key 'train.adam_betas' must be two numbers in [0, 1), got {betas}")


def check_launch(launch: Any) -> None:
    """Process counts that accelerate (and the data-parallel stages) can honour, named by key."""
    # Counts below 1 are refused by RANGES (check_ranges runs first).
    if launch.num_processes % launch.num_machines:
        raise ConfigError(f"launch.num_processes ({launch.num_processes}) counts the processes of all machines: "
                          f"it must be a multiple of launch.num_machines ({launch.num_machines})")
    if not 0 <= launch.machine_rank < launch.num_machines:
        raise ConfigError(f"launch.machine_rank must be in 0..{launch.num_machines - 1}, got {launch.machine_rank}")
    if launch.num_machines > 1 and not launch.main_process_ip:
        raise ConfigError("launch.num_machines > 1 needs launch.main_process_ip: the address of machine 0, "
                          "which every machine can reach")
    if launch.backend == "local" and (launch.num_processes > 1 or launch.num_machines > 1):
        raise ConfigError(f"launch.backend=local runs everything in this one process, but launch.num_processes="
                          f"{launch.num_processes}, launch.num_machines={launch.num_machines}; use backend auto")


def check_selection(cfg: Any, where: str = "") -> None:
    """Evaluation inside an iteration and checkpoint selection: settings that only mean something together."""
    every = cfg.train.eval_every
    if isinstance(every, int) and every < 0:
        raise ConfigError(f"config key 'train.eval_every' must be >= 0 (optimizer steps; 0: never) or 'epoch', "
                          f"got {every}{where}")
    if cfg.loop.select == "best" and not every:
        raise ConfigError("loop.select: best keeps the best evaluation inside an iteration, and train.eval_every "
                          f"is 0 (none): set it to N optimizer steps or 'epoch' (with data.val_num prompts){where}")
    if cfg.loop.patience and cfg.loop.select != "best":
        raise ConfigError(f"loop.patience {cfg.loop.patience} stops training when the selected metric stops "
                          f"improving: it needs loop.select: best (the model kept is the best one){where}")
    if cfg.loop.stop_metric != "auto" and not cfg.loop.stop_patience:
        raise ConfigError(f"loop.stop_metric '{cfg.loop.stop_metric}' names what loop.stop_patience watches on the "
                          f"validation split; loop.stop_patience is 0 (never stop){where}")
    if cfg.loop.select_metric != "auto" and cfg.loop.select != "best":
        raise ConfigError(f"loop.select_metric '{cfg.loop.select_metric}' names what loop.select: best picks by; "
                          f"loop.select is '{cfg.loop.select}'{where}")
