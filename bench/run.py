"""Benchmark harness: ``python -m bench.run [--only gen,train,scale,procs] [--pairs 3] [--smoke] [--profile]``.

Runs each comparison as alternating pairs after a warm-up, writes every number to
``bench/out/results.json`` (git-ignored) and the tables to ``bench/RESULTS.md``. The full run is sized
to finish within 40 minutes on a 2-core CPU; ``--smoke`` runs the same plumbing with minimal sizes
(seconds, numbers meaningless) and writes RESULTS.md into ``--out`` instead.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("gen", "gen32", "batch", "llamacpp", "train", "sft", "rollouts", "contention", "scale", "procs")

# Workload sizes. FULL fits the 40-minute budget on 2 cores (SmolLM2-135M trains at roughly 20-50 tokens/s
# there, so training workloads are small); SMOKE only exercises the code paths.
FULL: dict[str, dict[str, Any]] = {
    "gen": {"num_prompts": 64, "max_new_tokens": 128, "batch_size": 16},
    "train": {"num_pairs": 4, "batch_size": 2, "max_length": 512, "rejected_tokens": 128},
    "scale": {"sizes": [32, 64, 128], "iters": 3, "iter_prompts": 16, "max_new_tokens": 8, "max_length": 32,
              "eval_num": 8},
    "procs": {"prompts": 48, "n": 2, "max_new_tokens": 64, "gen_batch_size": 16, "pairs": 24, "train_batch_size": 2,
              "accumulation": 4, "max_length": 256, "rounds": 2},
    "gen32": {"num_prompts": 32, "max_new_tokens": 128, "batch_size": 16},
    "batch": {"num_prompts": 128, "max_new_tokens": 32, "pairs": 2},
    "llamacpp": {"num_prompts": 64, "max_new_tokens": 64},
    "sft": {"num_examples": 8, "batch_size": 4, "max_length": 512},
    # The anchors play one conversation at a time: they are timed on the first anchor_* of ours' records.
    "rollouts": {"agent_questions": 16, "anchor_questions": 6, "max_steps": 4, "step_tokens": 48, "rise_problems": 4,
                 "eval_problems": 16, "anchor_eval_problems": 4, "turn_tokens": 96, "pairs": 2},
    "contention": {"prompts": 24, "max_new_tokens": 48, "rounds": 2, "batch_size": 16},
}
SMOKE: dict[str, dict[str, Any]] = {
    "gen": {"num_prompts": 4, "max_new_tokens": 8, "batch_size": 2},
    "train": {"num_pairs": 2, "batch_size": 2, "max_length": 512, "rejected_tokens": 8},
    "scale": {"sizes": [2, 4], "iters": 2, "iter_prompts": 2, "max_new_tokens": 4, "max_length": 32, "eval_num": 2},
    "procs": {"prompts": 4, "n": 1, "max_new_tokens": 4, "gen_batch_size": 2, "pairs": 4, "train_batch_size": 1,
              "accumulation": 2, "max_length": 64, "rounds": 1},
    "gen32": {"num_prompts": 4, "max_new_tokens": 8, "batch_size": 2},
    "batch": {"num_prompts": 4, "max_new_tokens": 4, "pairs": 1, "batch_sizes": (2, 4)},
    "llamacpp": {"num_prompts": 4, "max_new_tokens": 4, "probe_batches": (2, 4)},
    "sft": {"num_examples": 2, "batch_size": 2, "max_length": 512},
    "rollouts": {"agent_questions": 2, "anchor_questions": 1, "max_steps": 2, "step_tokens": 6, "rise_problems": 2,
                 "eval_problems": 2, "anchor_eval_problems": 1, "turn_tokens": 6, "pairs": 1},
    "contention": {"prompts": 2, "max_new_tokens": 4, "rounds": 1, "batch_size": 2, "competitor_threads": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--pairs", type=int, default=3, help="alternating measured rounds per comparison (after warm-up)")
    p.add_argument("--smoke", action="store_true", help="minimal sizes, in-process arms: checks the plumbing only")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model directory, hub id or offline alias")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the real data samples")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="results.json, logs and scratch")
    p.add_argument("--results-md", type=Path, default=None,
                   help="where to write the markdown (default bench/RESULTS.md; with --smoke, OUT/RESULTS.md)")
    p.add_argument("--no-bf16", action="store_true",
                   help="skip the extra bf16-autocast training arm (skipped anyway on CPUs without bf16 units)")
    p.add_argument("--gen-dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="dtype of every generation arm; auto = what `model.dtype: auto` picks: bf16 where the CPU "
                   "has bf16 units that are faster than fp32 there (SPIN's HF generation script loads the model in "
                   "bf16), else fp32")
    p.add_argument("--profile", action="store_true",
                   help="gen: also profile one whole run of ours (torch profiler, top 15 ops by self CPU time) "
                   "into RESULTS.md")
    p.add_argument("--gen-arms", default="hf_continuous,compiled_static",
                   help="gen: transformers arms to add to ours and the SPIN recipe (comma-separated; '' for none)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.pairs < 1:
        p.error("--pairs must be at least 1")
    args.only = only
    from bench.gen_bench import EXTRA_ARMS

    args.gen_arms = tuple(a.strip() for a in args.gen_arms.split(",") if a.strip())
    if set(args.gen_arms) - set(EXTRA_ARMS):
        p.error(f"--gen-arms: choose from {', '.join(EXTRA_ARMS)}")
    return args


def _notes(results: dict[str, Any]) -> list[str]:
    """Measured facts next to each missed target (the profiles below them show the top ops)."""
    from bench.report import target_rows

    missed = {row["what"] for row in target_rows(results) if row["met"] is False}
    notes = []
    g, t = results.get("generation"), results.get("training")
    if g and any(w.startswith("generation") for w in missed):
        b = g["decode_bound"]
        waste = g["spin_recipe_finished_row_fraction"]["median"]
        notes.append(f"Generation: ours runs at {100 * g['ours_over_bound']['median']:.0f}% of the {b['binding']}-bound "
                     f"limit ({b['bound_tokens_per_s']:.0f} tokens/s at batch {g['settings']['batch_size']}). The "
                     f"recipe spends {100 * waste:.0f}% of its decode rows on sequences that already ended; skipping "
                     f"them (as ours does) can gain at most {1 / max(1 - waste, 1e-9):.2f}x at equal cost per row.")
        whole = _workload_compute_bound(g, results.get("machine", {}))
        if whole:
            notes.append(whole)
    if t and any(w.startswith("training") for w in missed):
        s = t["summary"]
        notes.append("Training: " + "; ".join(
            f"{arm} {v['tokens_per_s']['median']:.1f} tok/s at {100 * v['mfu']['median']:.1f}% MFU, "
            f"reference pass {v['precompute_s']['median']:.1f} s + loop {v['train_s']['median']:.1f} s, "
            f"peak {v['peak_rss_mib']['median']:.0f} MiB" for arm, v in s.items()) + ".")
        state = 3 * t["settings"]["params"] * 4 / 2**20  # fp32 weights + gradients + RMSprop square averages
        w = t["workload_shape"]
        notes.append(f"Training memory: of ours' {s['ours']['peak_rss_mib']['median']:.0f} MiB peak, weights + "
                     f"gradients + optimizer state take {state:.0f} MiB; the rest is the activations of one batch, "
                     f"{100 * w['padding_fraction']:.0f}% of whose positions are padding.")
    return notes


def _workload_compute_bound(g: dict[str, Any], machine: dict[str, Any]) -> str | None:
    """The compute bound on generated tokens/s counting the prompts' FLOPs too: the decode bound above counts
    decode steps only, yet both arms prefill every prompt once (about 2 x params FLOPs per prompt token, the same
    work on both sides). None where the results lack what it needs (runs before these fields existed)."""
    peak = machine.get("matmul_peak_gflops", {}).get(g["settings"]["dtype"])
    if not peak or "mean_prompt_tokens" not in g:
        return None
    prompt_tokens = g["mean_prompt_tokens"] * g["settings"]["prompts"]

    def bound_of(arm: str) -> float:  # each arm against the bound of the tokens it generated (sampling differs)
        generated = statistics.median(r["tokens"] for r in g["runs"][arm])
        return generated * peak * 1e9 / (2 * g["decode_bound"]["params"] * (prompt_tokens + generated))

    generated = statistics.median(r["tokens"] for r in g["runs"]["ours"])
    bound = bound_of("ours")
    shares = ", ".join(f"{arm} {100 * g['tokens_per_s'][arm]['median'] / bound_of(arm):.0f}%"
                       for arm in ("ours", "spin_recipe") if arm in g["runs"])
    return (f"Counting the prompts too ({prompt_tokens:.0f} prompt tokens, each prefilled once by both arms, beside "
            f"{generated:.0f} generated), this workload's FLOPs at the measured matmul peak ({peak:.0f} GFLOP/s) "
            f"allow at most {bound:.0f} generated tokens/s, {100 * prompt_tokens / (prompt_tokens + generated):.0f}% "
            f"of the FLOPs in prefill: {shares} of it.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from selfplay.threads import wait_policy_env

    # selfplay's OpenMP wait policy, before torch is imported: the in-process arms run as the CLI runs ours.
    os.environ.update(wait_policy_env())
    import torch

    from bench.machine import describe_machine
    from bench.measure import console
    from selfplay.core.memory import release_memory
    from selfplay.errors import UserError
    from selfplay.hardware import cpu_has_bf16, resolve_dtype_name
    from selfplay.io import write_json
    from selfplay.models import resolve_model

    # Smoke runs use one thread: on a busy machine, tiny ops across two threads stall on each other.
    threads = 1 if args.smoke else 2
    torch.set_num_threads(threads)
    sizes = SMOKE if args.smoke else FULL
    pairs = 1 if args.smoke else args.pairs
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    md_path = args.results_md or (out / "RESULTS.md" if args.smoke else REPO / "bench" / "RESULTS.md")
    t_start = time.perf_counter()
    model = args.model  # the sections resolve it again (cached); resolving here fails early with a clear message
    try:
        resolve_model(model)
    except UserError as e:
        console.print(f"Error: {e}")
        return 2
    results: dict[str, Any] = {"meta": {
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "model": args.model, "smoke": args.smoke,
        "sections": args.only, "skipped": [], "total_minutes": 0.0}}

    def save() -> None:
        from bench.report import render

        results["meta"]["total_minutes"] = (time.perf_counter() - t_start) / 60
        results["meta"]["load_average_at_end"] = list(os.getloadavg())
        results["notes"] = _notes(results)
        write_json(out / "results.json", results)
        md_path.write_text(render(results))

    def section(title: str) -> None:
        console.rule(f"{title}  (elapsed {(time.perf_counter() - t_start) / 60:.1f} min)")

    section("machine: measuring matmul peaks and memory bandwidth")
    # Measure only the peaks this run uses: an emulated dtype's peak is slow to measure and says nothing.
    gen_dtype = resolve_dtype_name(args.gen_dtype, "cpu").name
    bf16_train_arm = not (args.no_bf16 or args.smoke) and cpu_has_bf16()
    decoding = {"gen", "batch", "llamacpp", "rollouts"}
    used = ({gen_dtype} if decoding & set(args.only) else set()) | (
        {"float32"} if {"train", "sft", "gen32"} & set(args.only) else set())
    used |= {"bfloat16"} if bf16_train_arm and "train" in args.only else set()
    results["machine"] = describe_machine(threads=threads, quick=args.smoke,
                                          dtypes=tuple(sorted(used)) or ("float32",))
    gsm8k_test, gsm8k_train = args.data / "gsm8k" / "test_200.jsonl", args.data / "gsm8k" / "train_500.jsonl"

    def available(path: Path, what: str) -> bool:
        if path.is_file():
            return True
        message = f"{what}: {path} not found (the real data samples live in ../shared/data)"
        console.print(f"[yellow]skipping {message}[/]")
        results["meta"]["skipped"].append(message)
        return False

    if "gen" in args.only and available(gsm8k_test, "generation benchmark"):
        from bench.gen_bench import run_generation_bench

        section("1. generation: ours vs the SPIN recipe" + "".join(f", {a}" for a in args.gen_arms))
        results["generation"] = run_generation_bench(model, gsm8k_test, out / "gen", results["machine"],
                                                     pairs=pairs, dtype=gen_dtype, profile_run=args.profile,
                                                     arms=args.gen_arms, **sizes["gen"])
        save()
        # The section's four model copies, compiled graphs and (with --profile) a whole run's profiler events
        # are garbage now; give the pages back before the training arms start beside this process (a run
        # with --profile on 2026-12-01 held 20.9 GB here and the training section was OOM-killed).
        release_memory()
    if "gen32" in args.only and gen_dtype == "float32" and "generation" in results:
        # This CPU generates in fp32 already (`dtype: auto`): section 1 is the fp32 measurement.
        results["generation_fp32"] = {"same_as": "generation"}
    elif "gen32" in args.only and available(gsm8k_test, "fp32 generation benchmark"):
        from bench.gen_bench import run_generation_bench

        section("1a. generation in fp32: ours vs the SPIN recipe")
        results["generation_fp32"] = run_generation_bench(model, gsm8k_test, out / "gen32", results["machine"],
                                                          pairs=min(pairs, 2), dtype="float32", profile=False,
                                                          arms=(), **sizes["gen32"])
        save()
        release_memory()
    if "batch" in args.only and available(gsm8k_test, "batch-size sweep"):
        from bench.batch_bench import run_batch_bench

        section("1b. decode throughput vs batch size: ours and the SPIN recipe")
        results["batch"] = run_batch_bench(model, gsm8k_test, out / "batch", dtype=gen_dtype,
                                           **{**sizes["batch"], "pairs": min(pairs, sizes["batch"]["pairs"])})
        save()
        release_memory()
    if "llamacpp" in args.only and available(gsm8k_test, "llama.cpp comparison"):
        from bench.llamacpp_bench import run_llamacpp_bench

        section("1c. ours vs llama.cpp, each at its fastest batch size")
        best = results.get("batch", {}).get("best_batch", {}).get("ours")
        results["llamacpp"] = run_llamacpp_bench(model, gsm8k_test, out / "llamacpp", pairs=pairs, dtype=gen_dtype,
                                                 threads=threads, ours_batch=int(best) if best else None,
                                                 **sizes["llamacpp"])
        save()  # without llama-cpp-python (or on another model) the section says why it did not run
        release_memory()
    if "train" in args.only and available(gsm8k_train, "training benchmark"):
        from bench.train_bench import build_spin_pairs, profile_ours, run_training_bench

        section("2. training: ours vs TRL DPOTrainer")
        tr = sizes["train"]
        pairs_path = build_spin_pairs(model, gsm8k_train, tr["num_pairs"], tr["rejected_tokens"], out / "pairs")
        results["training"] = run_training_bench(
            model, pairs_path, out / "train", results["machine"], batch_size=tr["batch_size"],
            max_length=tr["max_length"], pairs=pairs, bf16_arm=bf16_train_arm,
            warmup=not args.smoke, in_process=args.smoke)
        save()
        from bench.report import target_rows

        if args.smoke or any(r["met"] is False and r["what"].startswith("training") for r in target_rows(results)):
            section("2b. profiling our training on one batch")
            results["training"]["profile_ours"] = profile_ours(model, pairs_path, out / "train",
                                                               batch_size=tr["batch_size"], max_length=tr["max_length"],
                                                               in_process=args.smoke)
            save()
    if "sft" in args.only and available(gsm8k_train, "likelihood training benchmark"):
        from bench.sft_bench import run_sft_bench

        section("2c. likelihood training: ours (--method sft) vs TRL SFTTrainer")
        results["sft"] = run_sft_bench(model, gsm8k_train, out / "sft", results["machine"], pairs=pairs,
                                       warmup=not args.smoke, in_process=args.smoke, **sizes["sft"])
        save()
    if "rollouts" in args.only and available(args.data / "fireact" / "hotpotqa_alpaca_200.json", "rollout benchmark"):
        from bench.rollout_bench import run_rollout_bench

        section("5. rollouts: agent, RISE and the sequential evaluation vs the anchors' loops")
        r = sizes["rollouts"]
        results["rollouts"] = run_rollout_bench(model, args.data, out / "rollouts", dtype=gen_dtype,
                                                **{**r, "pairs": min(pairs, r["pairs"])})
        save()
        release_memory()
    if "contention" in args.only and available(gsm8k_train, "contention benchmark"):
        from bench.contention_bench import run_contention_bench

        section("6. generation beside a competing CPU-heavy process vs alone")
        results["contention"] = run_contention_bench(model, gsm8k_train, out / "contention", **sizes["contention"])
        save()
    if "scale" in args.only and available(gsm8k_train, "scaling benchmark"):
        from bench.scale_bench import run_scaling_bench

        section("3. scaling: loop iteration vs prompts, and over iterations")
        results["scaling"] = run_scaling_bench(model, gsm8k_train, out / "scale", in_process=args.smoke,
                                               **sizes["scale"])
        save()
    if "procs" in args.only and available(gsm8k_train, "processes benchmark"):
        from bench.procs_bench import run_processes_bench

        section("4. scale-out: 1 vs 2 processes, one thread each")
        results["processes"] = run_processes_bench(model, gsm8k_train, out / "procs", **sizes["procs"])
    save()
    section(f"done: {out / 'results.json'} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
