"""The method registry: name -> :class:`~selfplay.methods.base.Method` (one module each).

:func:`load_config` is the config loader every command uses: it layers the chosen method's preset
between the defaults and the user's YAML and checks, before anything runs, that the method exists and
that its loss, objective and options fit together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay import config as C
from selfplay.core.objectives import get_objective
from selfplay.errors import ConfigError, suggest
from selfplay.methods import agent, gpm, rise, sft, spin, sppo
from selfplay.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (
    spin.METHOD,
    sppo.SPPO,
    sppo.GPO,
    sppo.DPO,
    sft.METHOD,
    rise.METHOD,
    agent.SPIN_AGENT,
    agent.AGENT_DPO,
    agent.AGENT_SFT,
    gpm.GPM,
    gpm.BT_RM,
)}


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is a ConfigError suggesting the nearest."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'.{suggest(name, METHODS)} Available: {', '.join(METHODS)}.")
    return METHODS[name]


def loss_of(cfg: C.Config) -> str:
    """The loss this config trains with: ``train.loss``, or the method's default when it is ``auto``."""
    return get_method(cfg.method).default_loss if cfg.train.loss == "auto" else cfg.train.loss


def check_config(cfg: C.Config) -> C.Config:
    """Method, objective and loss options that must agree; raises ConfigError naming the key."""
    method = get_method(cfg.method)
    get_objective(method.objective).check(loss_of(cfg), cfg.train)
    if method.check is not None:
        method.check(cfg)
    return cfg


def load_config(path: str | Path | None = None, sets: list[str] | None = None,
                flags: dict[str, Any] | None = None) -> C.Config:
    """Resolve the config: defaults < method preset < YAML < ``--set`` < explicit flags, then check it."""
    cfg = C.load_config(path, sets, flags)
    method = get_method(cfg.method)
    if method.preset:
        cfg = C.load_config(path, sets, flags, preset=method.preset)
    return check_config(cfg)
