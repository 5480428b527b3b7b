"""Generation beside a competing CPU-heavy process, against generation alone (the issue's oversubscribed CPUs).

Ours is the real ``selfplay generate`` command in a fresh process (so the thread policy of
:mod:`selfplay.threads` applies as for a user); tokens/s = sample tokens / the command's wall time. The
competitor is another PyTorch process doing what a second training job or a test suite does to the CPU:
matmuls and elementwise ops on all cores, with PyTorch's and GNU OpenMP's defaults (its idle threads spin); it
starts before our command and is stopped after it.

Arms (alternating, ``rounds`` rounds):

* ``alone`` / ``contended`` — ours with its thread policy (threads from the usable cores, a bounded OpenMP spin);
* ``alone_spinning`` / ``contended_spinning`` — ours with libgomp's default spin (``GOMP_SPINCOUNT=300000``,
  what it ran with before the policy), to show what the policy changes when contended and what it costs idle.

Reported: each arm's tokens/s, the per-round ratios contended / alone (1.0 = no slowdown; sharing 2 cores
evenly with one equally busy process gives 0.5), and alone / alone_spinning (the policy's cost on an idle machine).
The 1-minute load average is recorded at the start and end of every run.
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

# What the competitor runs until it is stopped: a training-like mix of medium matmuls and elementwise ops.
COMPETITOR = """
import torch
a, b = torch.randn(768, 768), torch.randn(768, 768)
while True:
    c = torch.relu(a @ b) * 0.5 + a
    a = c / (c.norm() + 1.0) * 20.0
"""
SPIN_DEFAULT = "300000"  # libgomp's own busy-wait count when OMP_WAIT_POLICY is unset


def _competitor(threads: int | None) -> subprocess.Popen:
    """The competing process: PyTorch's thread defaults (all cores) unless ``threads`` is given."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                              "SELFPLAY_NUM_THREADS")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def run_contention_bench(model_name: str, source: Path, out_dir: Path, *, prompts: int, max_new_tokens: int,
                         rounds: int, batch_size: int, competitor_threads: int | None = None) -> dict[str, Any]:
    """Tokens/s of ``selfplay generate`` alone and beside a competitor, with our thread policy and with spinning.

    ``competitor_threads``: None (the measurement) lets the competitor take every core; the smoke run gives it
    one thread, so checking the plumbing does not stall whatever else runs on the machine (a test suite)."""
    from bench.procs_bench import _data, _sample_tokens
    from selfplay.models import resolve_model

    model_dir = resolve_model(model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    sft, _ = _data(source, prompts, 1, out_dir)

    def arm(contended: bool, spinning: bool):
        def call(rep: int) -> dict[str, Any]:
            gen = out_dir / "gen"
            shutil.rmtree(gen, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
            env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            if spinning:
                env["GOMP_SPINCOUNT"] = SPIN_DEFAULT
            competitor = _competitor(competitor_threads) if contended else None
            try:
                if competitor is not None:
                    time.sleep(1.0)  # it has started and spun up its threads
                load = os.getloadavg()[0]
                log = out_dir / "logs" / f"{'contended' if contended else 'alone'}_{'spin' if spinning else 'policy'}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                with open(log, "w") as f:
                    proc = subprocess.run([sys.executable, "-m", "selfplay.cli.main", "generate", "--model", model_dir,
                                           "--data", str(sft), "--out", str(gen), "--max-new-tokens", str(max_new_tokens),
                                           "--batch-size", str(batch_size), "--temperature", "1.0"],
                                          stdout=f, stderr=subprocess.STDOUT, env=env)
                seconds = time.perf_counter() - t0
            finally:
                if competitor is not None:
                    os.killpg(competitor.pid, 9)
                    competitor.wait()
            if proc.returncode != 0:
                raise RuntimeError(f"selfplay generate failed (exit {proc.returncode}); log {log}")
            tokens = _sample_tokens(gen, model_dir)
            return {"seconds": seconds, "tokens": float(tokens), "tokens_per_s": tokens / seconds,
                    "load_start": load, "load_end": os.getloadavg()[0]}
        return call

    arms = {"alone": arm(False, False), "contended": arm(True, False),
            "alone_spinning": arm(False, True), "contended_spinning": arm(True, True)}
    console.print(f"[bold]contention[/] {prompts} prompts x {max_new_tokens} tokens, batch {batch_size}")
    runs = alternate(arms, rounds, warmup=False, label="contention")
    return {
        "settings": {"model": model_name, "source": str(source), "prompts": prompts, "max_new_tokens": max_new_tokens,
                     "batch_size": batch_size, "rounds": rounds, "competitor": COMPETITOR.strip(),
                     "competitor_threads": competitor_threads or "all cores", "spin_default": SPIN_DEFAULT},
        "runs": runs,
        "tokens_per_s": {a: summarize([r["tokens_per_s"] for r in rs]) for a, rs in runs.items()},
        "load": {a: summarize([r["load_start"] for r in rs]) for a, rs in runs.items()},
        "contended_over_alone": ratios(runs, "tokens_per_s", "contended", "alone"),
        "spinning_contended_over_alone": ratios(runs, "tokens_per_s", "contended_spinning", "alone_spinning"),
        "policy_over_spinning_contended": ratios(runs, "tokens_per_s", "contended", "contended_spinning"),
        "policy_over_spinning_alone": ratios(runs, "tokens_per_s", "alone", "alone_spinning"),
    }
