"""``selfplay serve``: an OpenAI-compatible chat endpoint over a local model (e.g. a local judge)."""

from __future__ import annotations

from typing import Annotated

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, resolve

app = typer.Typer(help="Serve a local model at /v1/chat/completions (OpenAI-compatible).")


@app.callback(invoke_without_command=True)
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="HF id, local path or alias.")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    max_tokens: Annotated[int, typer.Option(help="Cap on max_tokens per request.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Concurrent requests decoded together at most.")] = 8,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve MODEL until Ctrl-C; point `--judge http://HOST:PORT/v1` at it."""
    from selfplay.evals.serve import serve as run_server

    cfg = resolve(config, set_)
    run_server(model, host=host, port=port, max_tokens=max_tokens, batch_size=batch_size, model_cfg=cfg.model)
