"""``selfplay eval preference -m PATH --data PAIRS``: held-out accuracy of a trained GPM / Bradley-Terry judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``preference`` command to the ``eval`` sub-app."""

    @app.command("preference")
    def preference(
        model: Annotated[str, typer.Option("--model", "-m", help=(
            "A GPM or Bradley-Terry head checkpoint (selfplay train --method gpm | bt-rm, or the GPM repo's)."))],
        data: Annotated[str, typer.Option("--data", "-d", help=(
            "Preference pairs: {prompt, chosen, rejected, margin?, subset?} rows, chosen/rejected conversations "
            "(UltraFeedback, Skywork), ranked samples (selfplay rank), as a file, directory or hub id."))],
        format_: Annotated[str, typer.Option("--format", help=(
            "pairs | rewardbench (rows name their subset; reports RewardBench's four sections)."))] = "pairs",
        split: Annotated[str, typer.Option(
            help="Split of a hub id or directory (RewardBench's is 'filtered').")] = "train",
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help=(
            "Output directory (default: evals/<model>/preference)."))] = None,
        batch_size: Annotated[int, typer.Option(help="Conversations per forward pass.")] = 8,
        max_length: Annotated[int, typer.Option(help="Tokens kept per conversation (the start; EOS last).")] = 4096,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    ) -> None:
        """Accuracy (s > 0, 95% interval over prompts), mean sigma(s / tau) and loss of a judge on pairs."""
        from selfplay.errors import UserError
        from selfplay.evals.generation import model_label
        from selfplay.evals.preference import evaluate_preference, print_preference

        if batch_size < 1 or max_length < 2:
            raise UserError(f"--batch-size must be >= 1 and --max-length >= 2, got {batch_size}, {max_length}")
        out_dir = out if out is not None else Path("evals") / model_label(model) / "preference"
        metrics = evaluate_preference(model, data, out_dir, fmt=format_, split=split, batch_size=batch_size,
                                      max_length=max_length, device=device)
        print_preference(metrics)
        typer.echo(f"metrics: {out_dir / 'metrics.json'}")
