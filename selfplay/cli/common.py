"""Options and helpers shared by the CLI modules (config loading, console)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from selfplay.config import Config

from selfplay.progress import console  # noqa: F401 (the one stderr console, re-exported for the CLI)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key: --set train.beta=0.2 (repeatable)."),
]


def resolve(config: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Build the config from file, ``--set`` items and explicit flags (dotted keys; None = not given), with the
    chosen method's preset and checks (:func:`selfplay.methods.load_config`)."""
    from selfplay.methods import load_config

    return load_config(config, sets or [], {k.replace("__", "."): v for k, v in flags.items()})
