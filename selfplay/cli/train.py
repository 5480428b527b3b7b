"""``selfplay train``: one round of training on a file of training records, with the method's objective."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, console, resolve

app = typer.Typer(help="Train on pairs (SPIN, SPPO, GPO, DPO), weighted single responses (SFT, RISE), or train a "
                       "judge on preference pairs (GPM, Bradley-Terry reward model).")


@app.callback(invoke_without_command=True)
def train(
    data: Annotated[Path, typer.Option("--data", "-d", help=(
        "Training records JSONL: pairs {id, prompt, chosen, rejected, ...} or single responses "
        "{id, prompt, response, weight?, reward?}, as the method trains on; gpm / bt-rm also read "
        "UltraFeedback/Skywork pairs and ranked samples."))],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (model/, metrics.jsonl, ...).")],
    model: Annotated[Optional[str], typer.Option(help="HF id, local path or alias (default: config model).")] = None,
    method: Annotated[Optional[str], typer.Option(help=(
        "A method: spin | sppo | gpo | dpo | sft | rise | gpm | bt-rm | ... (its objective and default loss)."))] = None,
    loss: Annotated[Optional[str], typer.Option(help="Loss name (default: the method's).")] = None,
    beta: Annotated[Optional[float], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option()] = None,
    epochs: Annotated[Optional[float], typer.Option()] = None,
    max_steps: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    grad_accum: Annotated[Optional[int], typer.Option()] = None,
    max_length: Annotated[Optional[int], typer.Option()] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--no-lora")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16")] = None,
    save_merged: Annotated[Optional[bool], typer.Option("--save-merged/--no-save-merged")] = None,
    val_data: Annotated[Optional[Path], typer.Option("--val-data", help=(
        "Validation SFT records {id, messages, reference} (a .jsonl file or a prepared directory's val split) "
        "evaluated on inside training every train.eval_every steps (or epoch): eval/accuracy, eval/real_loglik; "
        "loop.select=best keeps the best."))] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train MODEL on the records in DATA with the method's objective (a reference pass first when it needs one)."""
    cfg = resolve(config, set_, model__name_or_path=model, method=method, train__loss=loss, train__beta=beta,
                  train__lr=lr, train__epochs=epochs, train__max_steps=max_steps, train__batch_size=batch_size,
                  train__grad_accum=grad_accum, train__max_length=max_length, model__lora__enabled=lora,
                  train__gradient_checkpointing=gradient_checkpointing, train__precision=precision,
                  train__save_merged=save_merged)
    from selfplay.stages.train import train_stage

    result = train_stage(cfg, cfg.model.name_or_path, data, out, val_data)
    kept = ""
    if result.kept:
        from selfplay.model_meta import kept_text

        kept = f", kept {kept_text(result.kept)}: best {result.kept['metric']} {result.kept['value']:.4f}"
    console.print(f"[green]trained[/green] {result.steps} steps{kept} → {result.model_path}")
