"""Scaling with the number of prompts: ``selfplay data prepare`` and a tiny-model ``selfplay generate`` (and a
verifier ``rank``) on UltraChat-style data of 10k, 30k and 100k rows. Peak RSS should stay flat as the
prompts grow (only a batch is held) and seconds per 1k prompts constant (linear time).

``python -m bench.stream_bench [--sizes 10000,30000,100000] [--out bench_out/stream]`` prints a Markdown table
and writes ``stream.json``. Each command runs in a fresh process; its peak RSS is that process's own high-water
mark (``VmHWM``, read by the process as it exits: ``ru_maxrss`` would also count the forked copy of this
process before ``exec``). It includes the interpreter and its imports (torch, transformers: a few hundred
MiB), so the growth between sizes is what the stage holds per prompt.

The rows imitate ``HuggingFaceH4/ultrachat_200k`` (``prompt``, ``prompt_id``, ``messages`` of 2-6 turns,
~1.3 KB a row: 100k rows ≈ 131 MB, the size the reliability issue measured). Generation decodes 2 new
tokens per prompt with a random 2-layer Llama, so the time is the stage's bookkeeping and prefill, not
decoding; run on an idle machine for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORDS = ("the model answers each question with care and detail while a user asks about history science "
         "cooking travel music code poems numbers cities rivers stars machines languages and games").split()


def make_ultrachat(path: Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` UltraChat-style rows (streamed: constant memory whatever ``rows``)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            prompt = text(rng.randint(15, 45))
            messages = [{"role": "user", "content": prompt}]
            for turn in range(rng.choice((1, 1, 2, 3))):
                if turn:
                    messages.append({"role": "user", "content": text(rng.randint(8, 25))})
                messages.append({"role": "assistant", "content": text(rng.randint(40, 110))})
            f.write(json.dumps({"prompt": prompt, "prompt_id": f"{i:08x}", "messages": messages}) + "\n")
    return path


# Runs the selfplay CLI and, as the process exits, writes its peak RSS (VmHWM, kB) to $BENCH_HWM_OUT.
_HWM_WRAPPER = """
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_HWM_OUT"], "w") as out:
        out.write(kb)
atexit.register(_hwm)
sys.argv = ["selfplay", *sys.argv[1:]]
runpy.run_module("selfplay.cli.main", run_name="__main__")
"""


def run_measured(args: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``selfplay ARGS`` to completion; its wall seconds and its own peak RSS (MiB). Output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    hwm = log.with_suffix(".hwm")
    env = {**(env or os.environ), "BENCH_HWM_OUT": str(hwm)}
    with log.open("w") as out:
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-c", _HWM_WRAPPER, *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode
        seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"selfplay {' '.join(args)} failed with exit code {code}; see {log}")
    return {"seconds": seconds, "peak_rss_mib": int(hwm.read_text()) / 1024}


def run_stream_bench(out_dir: Path, sizes: list[int], *, model: Path | None = None, rank: bool = True,
                     batch_size: int = 16) -> dict[str, Any]:
    """Prepare, generate (and rank) at each size; returns per size and stage: seconds, s/1k prompts, peak MiB."""
    from selfplay.testing import build_tiny_llama

    model = model or build_tiny_llama(out_dir / "tiny-llama")
    selfplay: list[str] = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    results: dict[str, Any] = {}
    for n in sizes:
        work = out_dir / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)  # outputs of an earlier run would be resumed, not measured
        source = make_ultrachat(work / "ultrachat.jsonl", n)
        stages = {
            "prepare": [*selfplay, "data", "prepare", str(source), "--out", str(work / "data"), "--overwrite"],
            "generate": [*selfplay, "generate", "--model", str(model), "--data", str(work / "data"),
                         "--out", str(work / "gen"), "--n", "2", "--max-new-tokens", "2", "--batch-size",
                         str(batch_size), "--set", "model.dtype=float32"],
        }
        if rank:
            stages["rank"] = [*selfplay, "rank", "--data", str(work / "gen"), "--judge", "verifier:f1",
                              "--out", str(work / "rank.jsonl")]
        row: dict[str, Any] = {"source_mib": source.stat().st_size / 2**20}
        for stage, cmd in stages.items():
            m = run_measured(cmd, work / f"{stage}.log", env)
            m["seconds_per_1k"] = m["seconds"] / (n / 1000)
            row[stage] = m
            print(f"{n:>7} prompts  {stage:<8} {m['seconds']:8.1f} s  {m['seconds_per_1k']:7.2f} s/1k  "
                  f"peak {m['peak_rss_mib']:7.0f} MiB", file=sys.stderr)
        results[str(n)] = row
    return {"sizes": sizes, "batch_size": batch_size, "by_size": results}


def table(result: dict[str, Any]) -> str:
    stages = [s for s in ("prepare", "generate", "rank") if s in next(iter(result["by_size"].values()))]
    head = "| prompts | source MiB | " + " | ".join(f"{s} peak RSS MiB | {s} s/1k prompts" for s in stages) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(stages))]
    for n, row in result["by_size"].items():
        cells = " | ".join(f"{row[s]['peak_rss_mib']:.0f} | {row[s]['seconds_per_1k']:.2f}" for s in stages)
        lines.append(f"| {int(n):,} | {row['source_mib']:.0f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,30000,100000", help="comma-separated prompt counts")
    p.add_argument("--out", type=Path, default=Path("bench_out/stream"))
    p.add_argument("--no-rank", action="store_true", help="prepare and generate only")
    args = p.parse_args(argv)
    result = run_stream_bench(args.out, [int(s) for s in args.sizes.split(",")], rank=not args.no_rank)
    (args.out / "stream.json").write_text(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
