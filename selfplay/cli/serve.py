"""``selfplay serve``: an OpenAI-compatible chat endpoint over a local model (e.g. a local judge)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, resolve

app = typer.Typer(help="Serve a local model at /v1/chat/completions (OpenAI-compatible).")


@app.callback(invoke_without_command=True)
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="HF id, local path or alias.")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default; others need an API key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    max_tokens: Annotated[int, typer.Option(help="Cap on max_tokens per request.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Concurrent requests decoded together at most.")] = 8,
    api_key: Annotated[Optional[str], typer.Option(
        envvar="SELFPLAY_API_KEY", show_envvar=True, show_default=False,
        help="Bearer key clients must send (required beyond loopback). Prefer the environment variable: "
             "a command line is visible to other users.")] = None,
    context_length: Annotated[Optional[int], typer.Option(
        help="Context window in tokens (prompt + completion); default: the model's own.")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 beyond).")] = 4 << 20,
    max_connections: Annotated[int, typer.Option(
        help="Open connections at most; more are answered 503 (retried by OpenAI-style clients).")] = 512,
    backend: Annotated[str, typer.Option(
        help="hf (this server) | vllm (vLLM's own OpenAI server; GPU, selfplay[gpu]).")] = "hf",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve MODEL until Ctrl-C; point `--judge http://HOST:PORT/v1` at it."""
    from selfplay.evals.serve import serve as run_server

    cfg = resolve(config, set_)
    run_server(model, host=host, port=port, max_tokens=max_tokens, batch_size=batch_size, api_key=api_key,
               context=context_length, max_body_bytes=max_body_bytes, max_connections=max_connections,
               backend=backend, model_cfg=cfg.model)
