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


def at_least(low: float, *, above: bool = False, at_most: float | None = None) -> Any:
    """A typer ``callback`` refusing a count or size outside its range with one line, exit 2, before anything
    runs: Python slicing would read ``--limit -1`` as "all but the last" and ``--limit 0`` often meant "all".
    ``above``: the bound itself is refused too (``> low``). For options that are no config key (those are
    checked by :data:`selfplay.config_ranges.RANGES`)."""

    def check(param: typer.CallbackParam, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        name = param.opts[0] if param.opts else param.name
        if (value <= low if above else value < low) or (at_most is not None and value > at_most):
            allowed = f"{'>' if above else '>='} {low:g}" + (f" and <= {at_most:g}" if at_most is not None else "")
            raise UserError(f"{name} must be {allowed}, got {value:g}")
        return value

    return check
