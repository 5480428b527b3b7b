"""``selfplay data``: prepare SFT data from real formats, inspect it, synthesize the embedded task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, resolve

app = typer.Typer(help="Prepare, inspect and synthesize SFT data (and preference pairs for judges).",
                  no_args_is_help=True)
synth_app = typer.Typer(help="Generate the built-in procedural tasks.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")

OutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Output directory (train.jsonl, test.jsonl, metadata.json).")]
TestSizeOpt = Annotated[Optional[str], typer.Option(
    "--test-size", help="Hold out a test split: a row count (50) or a fraction (0.1), chosen by --seed.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing prepared directory.")]


def _report(out: Path) -> None:
    from selfplay.io import read_json

    meta = read_json(out / "metadata.json")
    counts = " + ".join(f"{n} {split}" for split, n in meta["counts"].items())
    typer.echo(f"Wrote {counts} records ({meta['format']}) to {out}")
    dropped = meta["dropped"]
    if dropped["total"]:
        reasons = "; ".join(f"{reason}: {count}" for reason, count in dropped["reasons"].items())
        typer.echo(f"Dropped {dropped['total']} invalid rows ({reasons})", err=True)


@app.command("prepare")
def prepare(
    out: OutOpt,
    source: Annotated[Optional[str], typer.Argument(
        help="A .jsonl/.json/.parquet/.csv file, a save_to_disk directory, a hub id (owner/name[:config]) "
             "or synth:arith[?num=N&seed=S]. Default: data.source of the config.")] = None,
    format_: Annotated[Optional[str], typer.Option(
        "--format", help="auto (detect), messages, spin, alpaca, sharegpt (with RISE's per-message loss "
                         "weights), gsm8k, math, hotpotqa, strategyqa, mmlu (header-less CSV too), bamboogle, "
                         "fireact, mt_bench, prompt_response or sft.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split to read from a hub id or a directory.")] = None,
    num: Annotated[Optional[int], typer.Option(help="Use N source rows (a random subset by --seed).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for --num and --test-size.")] = None,
    test_size: TestSizeOpt = None,
    turns: Annotated[Optional[str], typer.Option(
        help="Conversations: first|last|all assistant turns (all: one example per turn). "
             "Default: first; last for pairs.")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid",
        help="Drop invalid rows (counted by reason in metadata.json) instead of failing.")] = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Normalize a data source into canonical SFT records (a prepared directory)."""
    from selfplay.data.records import prepare_source

    cfg = resolve(config, set_, data__source=source, data__format=format_, data__split=split,
                  data__num=num, data__seed=seed)
    data = cfg.data
    path = prepare_source(data.source, out, format=data.format, split=data.split, num=data.num,
                          seed=data.seed, test_size=test_size, turns=turns, skip_invalid=skip_invalid,
                          overwrite=overwrite)
    _report(path)


@app.command("inspect")
def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="A prepared data directory or a JSONL file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show rows per split, the fields and two examples."""
    from rich.console import Console

    from selfplay.data.summary import render_summary, summarize

    summary = summarize(path)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        render_summary(summary, Console())


@synth_app.command("arith")
def synth_arith_cmd(
    out: OutOpt,
    num: Annotated[int, typer.Option(help="Number of problems (before the test split).")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    min_steps: Annotated[int, typer.Option(help="Fewest operations per problem.")] = 2,
    max_steps: Annotated[int, typer.Option(help="Most operations per problem.")] = 3,
    max_value: Annotated[int, typer.Option(help="Largest number written in a problem.")] = 50,
    test_size: TestSizeOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Multi-step arithmetic word problems with step-by-step solutions ending in '#### <answer>'."""
    from selfplay.data.records import prepare_source

    source = f"synth:arith?min_steps={min_steps}&max_steps={max_steps}&max_value={max_value}"
    path = prepare_source(source, out, num=num, seed=seed, test_size=test_size, overwrite=overwrite)
    _report(path)


PairTestOpt = Annotated[int, typer.Option(
    "--test-size", help="Prompts held out (all their pairs) in test.jsonl; 0 for none.")]


def _report_pairs(out: Path, counts: dict[str, int]) -> None:
    typer.echo(f"Wrote {' + '.join(f'{n} {split}' for split, n in counts.items())} preference pairs to {out}")


@synth_app.command("arith-prefs")
def synth_arith_prefs_cmd(
    out: OutOpt,
    num: Annotated[int, typer.Option(help="Number of problems (6 pairs each), held-out ones included.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    min_steps: Annotated[int, typer.Option(help="Fewest operations per problem.")] = 1,
    max_steps: Annotated[int, typer.Option(help="Most operations per problem.")] = 1,
    max_value: Annotated[int, typer.Option(help="Largest number written in a problem.")] = 10,
    test_size: PairTestOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Preference pairs over arithmetic answers: correct > wrong, then a closing sentence the verifier cannot see."""
    from selfplay.data.synth_preferences import arith_preference_pairs, write_pair_splits

    pairs = arith_preference_pairs(num, seed, min_steps=min_steps, max_steps=max_steps, max_value=max_value)
    meta = {"format": "pairs", "source": "synth:arith-prefs", "num": num, "seed": seed, "min_steps": min_steps,
            "max_steps": max_steps, "max_value": max_value}
    _report_pairs(out, write_pair_splits(out, pairs, test_groups=test_size, meta=meta, overwrite=overwrite))


@synth_app.command("cyclic")
def synth_cyclic_cmd(
    out: OutOpt,
    num: Annotated[int, typer.Option(help="Number of prompts (one preference cycle each).")] = 16,
    cycle: Annotated[int, typer.Option(help="Answers per cycle: 3 (A > B > C > A), 4, ...")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Intransitive preferences: a cycle over each prompt's answers (a scalar reward fits at most (c-1)/c)."""
    from selfplay.data.synth_preferences import cyclic_preference_pairs, write_pair_splits

    pairs = cyclic_preference_pairs(num, seed, cycle=cycle)
    meta = {"format": "pairs", "source": "synth:cyclic", "num": num, "cycle": cycle, "seed": seed}
    _report_pairs(out, write_pair_splits(out, pairs, test_groups=0, meta=meta, overwrite=overwrite))
