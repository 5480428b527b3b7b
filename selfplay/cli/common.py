"""Options and helpers shared by the CLI modules (config loading, console)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from selfplay.config import Config
from selfplay.errors import UserError

from selfplay.progress import console  # noqa: F401 (the one stderr console, re-exported for the CLI)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key: --set train.beta=0.2 (repeatable)."),
]


def comma_list(value: str | None, cast: Callable[[str], Any] = str) -> list[Any] | None:
    """ "1,16" -> [1, 16] (with ``cast=int``); None stays None (the option was not given)."""
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"expected a comma-separated list, got {value!r}") from None


def resolve(config: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Build the config from file, ``--set`` items and explicit flags (dotted keys; None = not given), with the
    chosen method's preset and checks (:func:`selfplay.methods.load_config`)."""
    from selfplay.methods import load_config

    return load_config(config, sets or [], {k.replace("__", "."): v for k, v in flags.items()})
