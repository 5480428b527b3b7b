"""The ``selfplay`` command: one sub-app per module, user errors as one message and exit code 2."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from selfplay.errors import UserError, disk_full_error
from selfplay.progress import quiet_libraries

quiet_libraries()  # before any stage imports transformers


class _Root(TyperGroup):
    """Root group that turns :class:`UserError` (from any subcommand) into one line on stderr, exit 2 — and a
    full disk met anywhere, even inside a library, into one line naming the file when known, exit 3."""

    def invoke(self, ctx: Any) -> Any:
        try:
            from selfplay.models import pause_full_collections
            from selfplay.threads import setup

            setup()  # threads and their wait policy, before any command imports torch
            pause_full_collections()  # until the first model: the imports then are frozen (selfplay.models)
            return super().invoke(ctx)
        except Exception as e:
            error = e if isinstance(e, UserError) else disk_full_error(e)
            if error is None or os.environ.get("SELFPLAY_TRACEBACK"):
                raise
            typer.echo(f"Error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    cls=_Root,
    name="selfplay",
    help="Self-play fine-tuning of language models: SPIN, SPPO/GPO, RISE and agent self-play.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Sub-apps import torch/transformers lazily inside their commands, so `selfplay --help` stays fast.
    from selfplay.cli import config_cmd, data, eval as eval_cmd, generate, loop, rank, rollout, serve, status, train

    app.add_typer(config_cmd.app, name="config")
    app.add_typer(data.app, name="data")
    app.add_typer(generate.app, name="generate")
    app.add_typer(rank.app, name="rank")
    app.add_typer(rollout.app, name="rollout")
    app.add_typer(train.app, name="train")
    app.add_typer(loop.app, name="loop")
    app.add_typer(eval_cmd.app, name="eval")
    app.add_typer(serve.app, name="serve")
    app.command("status")(status.status)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
