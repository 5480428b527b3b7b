"""Decode throughput against batch size: our sampler and the SPIN recipe at 16, 32, 64 and 128 rows at once.

Both arms decode the same GSM8K prompts (at least as many as the largest batch) with the same sampling settings,
dtype and ``max_new_tokens``; at each batch size they run alternately (ours, recipe) for ``pairs`` rounds after
one warm-up pass over every size. Ours is the HF sampler's continuous batching with at most ``batch`` prompts
running (and the KV-cache budget it always applies); the recipe is SPIN's ``model.generate`` in fixed batches of
``batch``. Tokens = generated tokens up to and including EOS. The section also reports the batch size the
``generate`` stage picks when ``generate.batch_size`` is left unset on this machine
(:func:`selfplay.core.samplers.default_batch_size`), next to the fastest one measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.gen_arms import spin_recipe_generate
from bench.measure import console, ratios, summarize

BATCH_SIZES = (16, 32, 64, 128)


def run_batch_bench(model_name: str, source: Path, out_dir: Path, *, num_prompts: int, max_new_tokens: int,
                    pairs: int, dtype: str, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict[str, Any]:
    """Tokens/s of ours and the recipe at each batch size; ratios per size; the fastest size of each arm."""
    from bench.gen_bench import load_spin_recipe_model, write_gsm8k_prompts
    from selfplay.config import ModelConfig
    from selfplay.core.samplers import default_batch_size, format_prompt, make_sampler
    from selfplay.data.records import load_sft

    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_sft(write_gsm8k_prompts(source, num_prompts, out_dir / "prompts.jsonl"))
    sampler = make_sampler("hf", model_name, model_cfg=ModelConfig(dtype=dtype), batch_size=16, device="cpu")
    model, tokenizer = load_spin_recipe_model(model_name, sampler.model.dtype)
    prompts = [format_prompt(tokenizer, r["messages"], "chat") for r in records]
    settings = {"temperature": 1.0, "top_p": 1.0}

    def ours(batch: int, n: int, new_tokens: int, seed: int) -> dict[str, float]:
        sampler.batch_size = batch
        t0 = time.perf_counter()
        sampler.generate(prompts[:n], n=1, max_new_tokens=new_tokens, seed=seed, progress=False, **settings)
        seconds = time.perf_counter() - t0
        return {"tokens": float(sampler.last_stats["tokens"]), "seconds": seconds}

    def recipe(batch: int, n: int, new_tokens: int, seed: int) -> dict[str, float]:
        return spin_recipe_generate(model, tokenizer, prompts[:n], batch_size=batch, max_new_tokens=new_tokens,
                                    seed=seed, **settings)

    arms = {"ours": ours, "spin_recipe": recipe}
    console.print("[bold]batch sweep[/] warm-up: every arm and size once, on a quarter of the prompts")
    for batch in batch_sizes:
        for arm in arms.values():
            arm(batch, max(batch, num_prompts // 4), max_new_tokens // 2, 0)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {str(b): {a: [] for a in arms} for b in batch_sizes}
    for rep in range(pairs):
        for batch in batch_sizes:
            for name, arm in arms.items():
                r = arm(batch, num_prompts, max_new_tokens, rep + 1)
                r["tokens_per_s"] = r["tokens"] / r["seconds"]
                runs[str(batch)][name].append(r)
                console.print(f"[bold]batch sweep[/] round {rep + 1}/{pairs}: {name} at {batch} rows "
                              f"{r['tokens_per_s']:.1f} tok/s")
    tokens_per_s = {b: {a: summarize([r["tokens_per_s"] for r in rs]) for a, rs in arms_runs.items()}
                    for b, arms_runs in runs.items()}
    best = {a: max(tokens_per_s, key=lambda b: tokens_per_s[b][a]["median"]) for a in arms}
    default = default_batch_size(str(sampler.model.device), sampler.model.dtype)  # the generate stage's, unset
    return {
        "settings": {"model": model_name, "prompts": num_prompts, "max_new_tokens": max_new_tokens, "pairs": pairs,
                     "dtype": str(sampler.model.dtype).replace("torch.", ""), "batch_sizes": list(batch_sizes),
                     "cache_bytes": sampler.cache_bytes, **settings},
        "runs": runs,
        "tokens_per_s": tokens_per_s,
        "ratio_ours_over_spin": {b: ratios(r, "tokens_per_s", "ours", "spin_recipe") for b, r in runs.items()},
        "best_batch": best,
        "default_batch_size": default,
        # the generate stage's default against the fastest size measured (per round; absent if not swept)
        "default_over_best": summarize([d["tokens_per_s"] / b["tokens_per_s"] for d, b in zip(
            runs[str(default)]["ours"], runs[best["ours"]]["ours"])]) if str(default) in runs else {},
        # ours at its fastest size over the recipe at its fastest: each arm at the batch it does best with
        "ratio_best_over_best": summarize([o["tokens_per_s"] / s["tokens_per_s"] for o, s in
                                           zip(runs[best["ours"]]["ours"], runs[best["spin_recipe"]]["spin_recipe"])]),
    }
