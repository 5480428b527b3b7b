"""Scale-out on this machine: the same generation and the same training on 1 and on 2 processes.

Each arm is the real command (``selfplay generate``, ``selfplay train``) in a fresh process with
``launch.num_processes`` 1 or 2 and ``OMP_NUM_THREADS=1``, so every process (generation worker, training
rank) is pinned to one thread and 2 processes can use at most 2 cores. The two arms alternate (1 2 1 2 ...).

Measured: the command's wall time (process start, imports, model load, the work, writing; what a user waits
for) and throughput: generation = sample tokens (the texts re-tokenized) / wall time; training = the training
loop's own tokens/s (non-pad tokens of all processes per second of the loop, from ``summary.json``: the
reference pass and start-up excluded), with the wall time of the whole command beside it. Both training arms
make the same updates: ``accumulation`` batches of b per step on 1 process, half as many per process on 2
(DDP all-reduces the gradients once per step, so a step of several batches amortizes it as real runs do).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import alternate, console, ratios, summarize

ARMS = {"1 process": 1, "2 processes": 2}


def _data(source: Path, prompts: int, pairs: int, out: Path) -> tuple[Path, Path]:
    """GSM8K train questions as canonical SFT records, and SPIN-shaped pairs (chosen = the reference solution,
    rejected = the next question's solution: real lengths without generating them first)."""
    from selfplay.data.records import convert_rows
    from selfplay.data.sources import read_rows
    from selfplay.io import write_jsonl

    num = max(prompts, pairs) + 1
    records = [g[0] for g in convert_rows(read_rows(str(source))[:num], "gsm8k", show_progress=False).groups]
    sft, pair_file = out / "prompts.jsonl", out / "pairs.jsonl"
    write_jsonl(sft, records[:prompts])
    write_jsonl(pair_file, [{"id": r["id"], "prompt": r["messages"], "chosen": r["reference"],
                             "rejected": records[i + 1]["reference"]} for i, r in enumerate(records[:pairs])])
    return sft, pair_file


def _run(args: list[str], log: Path) -> float:
    """Run ``selfplay ARGS`` pinned to one thread per process; returns its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "selfplay.cli.main", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`selfplay {' '.join(args)}` failed (exit {proc.returncode}); log {log}:\n"
                           + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return seconds


def _sample_tokens(gen_dir: Path, model_dir: str) -> int:
    from transformers import AutoTokenizer

    from selfplay.io import read_jsonl

    tok = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(tok(s, add_special_tokens=False)["input_ids"])
               for path in sorted(gen_dir.glob("shard-*.jsonl")) for row in read_jsonl(path) for s in row["samples"])


def run_processes_bench(model_name: str, source: Path, out_dir: Path, *, prompts: int, n: int, max_new_tokens: int,
                        gen_batch_size: int, pairs: int, train_batch_size: int, accumulation: int, max_length: int,
                        rounds: int) -> dict[str, Any]:
    """Generation and training, 1 vs 2 processes, ``rounds`` alternating rounds; returns every figure."""
    from selfplay.hardware import fast_bf16
    from selfplay.io import read_json
    from selfplay.models import resolve_model

    model_dir = resolve_model(model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    sft, pair_file = _data(source, prompts, pairs, out_dir)

    def generate(processes: int) -> Any:
        def arm(rep: int) -> dict[str, Any]:
            gen = out_dir / "gen" / f"p{processes}"
            shutil.rmtree(gen, ignore_errors=True)
            seconds = _run(["generate", "--model", model_dir, "--data", str(sft), "--out", str(gen), "--n", str(n),
                            "--max-new-tokens", str(max_new_tokens), "--batch-size", str(gen_batch_size),
                            "--temperature", "1.0", "--set", f"launch.num_processes={processes}"], out_dir / "logs" / f"gen_p{processes}.log")
            tokens = _sample_tokens(gen, model_dir)
            return {"seconds": seconds, "tokens": float(tokens), "tokens_per_s": tokens / seconds}
        return arm

    def train(processes: int) -> Any:
        def arm(rep: int) -> dict[str, Any]:
            out = out_dir / "train" / f"p{processes}"
            shutil.rmtree(out, ignore_errors=True)
            seconds = _run(["train", "--model", model_dir, "--data", str(pair_file), "--out", str(out),
                            "--method", "spin", "--batch-size", str(train_batch_size),
                            "--grad-accum", str(accumulation // processes), "--max-length", str(max_length),
                            "--set", "train.logging_steps=1000000", "--set", "train.save_steps=0",
                            "--set", f"launch.num_processes={processes}"], out_dir / "logs" / f"train_p{processes}.log")
            s = read_json(out / "summary.json")
            assert s["processes"] == processes, s  # the 2-process arm really trained on 2 processes
            return {"seconds": seconds, "loop_tokens_per_s": float(s["metrics"]["tokens_per_s"]),
                    "steps": float(s["steps"])}
        return arm

    console.print(f"[bold]processes[/] {prompts} prompts x {n} samples x {max_new_tokens} tokens; {pairs} pairs")
    gen_runs = alternate({name: generate(p) for name, p in ARMS.items()}, rounds, warmup=False, label="generation")
    train_runs = alternate({name: train(p) for name, p in ARMS.items()}, rounds, warmup=False, label="training")
    one, two = ARMS
    return {
        "settings": {"model": model_name, "source": str(source), "prompts": prompts, "n": n,
                     "max_new_tokens": max_new_tokens, "gen_batch_size": gen_batch_size, "pairs": pairs,
                     "train_batch_size": train_batch_size, "accumulation": accumulation, "max_length": max_length,
                     "rounds": rounds,
                     "threads_per_process": 1,
                     "dtype": f"{fast_bf16('cpu').name} (model.dtype and train.precision auto: {fast_bf16('cpu').reason})"},
        "generation": {arm: {k: summarize([r[k] for r in rs]) for k in ("seconds", "tokens_per_s", "tokens")}
                       for arm, rs in gen_runs.items()},
        "training": {arm: {k: summarize([r[k] for r in rs]) for k in ("seconds", "loop_tokens_per_s", "steps")}
                     for arm, rs in train_runs.items()},
        "speedup": {"generation_tokens_per_s": ratios(gen_runs, "tokens_per_s", two, one),
                    "training_loop_tokens_per_s": ratios(train_runs, "loop_tokens_per_s", two, one),
                    "training_wall": ratios(train_runs, "seconds", one, two)},
        "runs": {"generation": gen_runs, "training": train_runs},
    }
