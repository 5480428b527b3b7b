"""Generation: selfplay's generate stage (HF backend) against the SPIN recipe's ``model.generate`` loop, and
against transformers' own faster routes.

The baseline reproduces SPIN's HF generation script (``spin/generate.py`` before its vLLM rewrite):
prompts in dataset order, fixed batches of ``batch_size``, left padding to a multiple of 8, no added
special tokens, ``model.generate`` with sampling, on the model exactly as ``from_pretrained`` loads it
(its default attention) in bfloat16, as that script loaded it (``torch_dtype=torch.bfloat16``; ``--gen-dtype
float32`` compares fp32 with fp32). Ours loads the same weights through ``make_sampler``, which may switch the
attention implementation for its own decode loop; both run in the same dtype on the same prompt texts,
sampling settings and ``max_new_tokens``.

Two more arms, on their own copies of the same weights and with the same prompts, settings and batch
(``bench/gen_arms.py``): ``hf_continuous``, transformers' continuous batching (``model.generate_batch``), and
``compiled_static``, the recipe's batches on a static KV cache with a ``torch.compile``d forward (compiled in
an untimed warm-up). An arm that cannot run on this machine is left out of the pairs and its reason is
reported.

Tokens counted are real generated tokens up to and including EOS; padding after a row's EOS (which
``model.generate`` keeps computing until the batch's longest row ends) is not counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.gen_arms import (Guarded, compile_forward, compiled_static_generate, compiled_static_warmup, first_failure,
                            hf_continuous_config, hf_continuous_generate, recipe_batch_shapes, spin_recipe_generate)
from bench.measure import Profile, alternate, console, ratios, summarize

__all__ = ["run_generation_bench", "spin_recipe_generate", "load_spin_recipe_model", "decode_bound"]


def write_gsm8k_prompts(source: Path, num: int, dest: Path) -> Path:
    """The first ``num`` GSM8K rows of ``source`` (dataset order) as canonical SFT records in ``dest``."""
    from selfplay.data.records import convert_rows
    from selfplay.data.sources import read_rows
    from selfplay.io import write_jsonl

    converted = convert_rows(read_rows(str(source))[:num], "gsm8k", show_progress=False)
    write_jsonl(dest, (group[0] for group in converted.groups))
    return dest


def load_spin_recipe_model(model_name: str, dtype: Any) -> tuple[Any, Any]:
    """The baseline's own copy of the model: plain ``from_pretrained``, pad token = EOS as SPIN sets it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.models import resolve_model

    path = resolve_model(model_name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def decode_bound(model: Any, machine: dict[str, Any], batch_size: int, mean_context: float) -> dict[str, float]:
    """Physical limits on decode tokens/s at ``batch_size`` rows for this model on this machine.

    Memory bound: every decode step reads all weights once plus each row's KV cache
    (``mean_context`` tokens on average), so steps/s <= read bandwidth / bytes per step. Compute bound:
    a step costs about 2·params FLOPs per row, so tokens/s <= matmul peak / (2·params). The smaller of the
    two is the limit (``binding`` names it).
    """
    import torch

    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    n_params = sum(p.numel() for p in params)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    elem = torch.finfo(model.dtype).bits // 8
    kv_bytes_per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * elem
    step_bytes = weight_bytes + batch_size * mean_context * kv_bytes_per_token
    read_bw = machine["memory_bandwidth"]["read_gbs"] * 1e9
    dtype_name = "bfloat16" if model.dtype == torch.bfloat16 else "float32"
    peak = machine["matmul_peak_gflops"][dtype_name] * 1e9
    memory_tps = read_bw / step_bytes * batch_size
    compute_tps = peak / (2 * n_params)
    return {"params": float(n_params), "weight_bytes": float(weight_bytes),
            "kv_bytes_per_token": float(kv_bytes_per_token), "mean_context": mean_context,
            "bytes_per_step": float(step_bytes), "max_steps_per_s": read_bw / step_bytes,
            "memory_bound_tokens_per_s": memory_tps, "compute_bound_tokens_per_s": compute_tps,
            "bound_tokens_per_s": min(memory_tps, compute_tps),
            "binding": "memory" if memory_tps < compute_tps else "compute"}


EXTRA_ARMS = ("hf_continuous", "compiled_static")


def extra_arms(names: tuple[str, ...], model_name: str, dtype: Any, tokenizer: Any, prompts: list[str],
               settings_for: Any, *, batch_size: int, max_new_tokens: int, settings: dict[str, float],
               info: dict[str, dict[str, Any]]) -> dict[str, Guarded]:
    """The transformers arms, each on its own copy of the weights, probed before the pairs: an arm whose probe
    (``hf_continuous``: 2 prompts x 2 tokens; ``compiled_static``: compiling, in its warm-up) fails comes back
    with its ``reason`` set. ``info`` receives each arm's configuration and warm-up figures."""
    arms: dict[str, Guarded] = {}
    if "hf_continuous" in names:
        cb_model, _ = load_spin_recipe_model(model_name, dtype)

        def hf_continuous(rep: int) -> dict[str, float]:
            n, new_tokens = settings_for(rep)
            r = hf_continuous_generate(cb_model, tokenizer, prompts[:n], batch_size=batch_size,
                                       max_new_tokens=new_tokens, seed=rep + 1, **settings)
            return {**r, "tokens_per_s": r["tokens"] / r["seconds"]}

        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        cb = hf_continuous_config(lengths, batch_size=batch_size, max_new_tokens=max_new_tokens, seed=0)
        info["hf_continuous"] = {"attn_implementation": cb_model.config._attn_implementation,
                                 "max_requests_per_batch": cb.max_requests_per_batch, "num_blocks": cb.num_blocks,
                                 "page_size": cb.page_size, "max_batch_tokens": cb.max_batch_tokens}
        arms["hf_continuous"] = Guarded(hf_continuous, first_failure(lambda: hf_continuous_generate(
            cb_model, tokenizer, prompts[:2], batch_size=batch_size, max_new_tokens=2, seed=0, **settings)))
    if "compiled_static" in names:
        static_model, _ = load_spin_recipe_model(model_name, dtype)
        longest = max(length for _, length in recipe_batch_shapes(tokenizer, prompts, batch_size))
        max_cache_len = longest + max_new_tokens
        info["compiled_static"] = {"mode": "reduce-overhead", "fullgraph": True, "max_cache_len": max_cache_len}

        def warm_up() -> None:
            compile_forward(static_model)
            warm = compiled_static_warmup(static_model, tokenizer, prompts, batch_size=batch_size,
                                          max_cache_len=max_cache_len, **settings)
            info["compiled_static"].update(warmup_s=warm["seconds"], warmup_graphs=warm["graphs"])

        def compiled_static(rep: int) -> dict[str, float]:
            n, new_tokens = settings_for(rep)
            r = compiled_static_generate(static_model, tokenizer, prompts[:n], batch_size=batch_size,
                                         max_new_tokens=new_tokens, max_cache_len=max_cache_len, seed=rep + 1,
                                         **settings)
            return {**r, "tokens_per_s": r["tokens"] / r["seconds"]}

        console.print("generation: compiling compiled_static's forward (untimed warm-up) ...")
        arms["compiled_static"] = Guarded(compiled_static, first_failure(warm_up))
    for name, arm in arms.items():
        if arm.reason:
            console.print(f"[yellow]generation: {name} cannot run here: {arm.reason}[/]")
    return arms


def run_generation_bench(model_name: str, source: Path, out_dir: Path, machine: dict[str, Any], *, num_prompts: int,
                         max_new_tokens: int, batch_size: int, pairs: int, dtype: str = "auto",
                         profile: bool = True, profile_run: bool = False,
                         arms: tuple[str, ...] = EXTRA_ARMS) -> dict[str, Any]:
    """A/B/C/D the arms ``pairs`` times after a short warm-up; returns per-arm runs, summaries and the bound.

    ``profile``: also record the top ops of our sampler on one batch (what bounds it). ``profile_run``:
    also profile one whole run of ours (``run_generate`` on all prompts, as a measured run, after the
    pairs) and keep the top 15 ops by self CPU time. ``arms``: which of ``EXTRA_ARMS`` to add to ours and
    the recipe.
    """
    import shutil

    from selfplay.config import ModelConfig, load_config
    from selfplay.core.samplers import format_prompt, make_sampler
    from selfplay.data.records import load_sft
    from selfplay.stages.generate import run_generate

    data = write_gsm8k_prompts(source, num_prompts, out_dir / "gsm8k_prompts.jsonl")
    records = load_sft(data)
    sampler = make_sampler("hf", model_name, model_cfg=ModelConfig(dtype=dtype), batch_size=batch_size, device="cpu")
    model, tokenizer = load_spin_recipe_model(model_name, sampler.model.dtype)
    prompts = [format_prompt(tokenizer, r["messages"], "chat") for r in records]
    settings = {"temperature": 1.0, "top_p": 1.0}

    def settings_for(rep: int) -> tuple[int, int]:
        # Warm-up (rep -1): a quarter of the prompts at full length, so every batch size and cache length the
        # measured runs meet has been seen once (first-time shapes were a 10x outlier in one run).
        return (max(1, num_prompts // 4), max_new_tokens) if rep < 0 else (num_prompts, max_new_tokens)

    def ours(rep: int) -> dict[str, float]:
        n, new_tokens = settings_for(rep)
        cfg = load_config(flags={"generate.backend": "hf", "generate.n": 1, "generate.max_new_tokens": new_tokens,
                                 "generate.batch_size": batch_size, "generate.seed": rep + 1,
                                 "generate.temperature": settings["temperature"], "generate.top_p": settings["top_p"],
                                 "generate.prompt_format": "chat"})
        target = out_dir / f"ours_{rep + 1}"
        shutil.rmtree(target, ignore_errors=True)
        ids = [r["id"] for r in records[:n]]
        t0 = time.perf_counter()
        run_generate(cfg, model_name, data, target, ids=ids, sampler=sampler)
        seconds = time.perf_counter() - t0
        tokens = float(sampler.last_stats["tokens"])
        return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}

    def spin_recipe(rep: int) -> dict[str, float]:
        n, new_tokens = settings_for(rep)
        r = spin_recipe_generate(model, tokenizer, prompts[:n], batch_size=batch_size, max_new_tokens=new_tokens,
                                 seed=rep + 1, **settings)
        return {**r, "tokens_per_s": r["tokens"] / r["seconds"]}

    arm_info: dict[str, dict[str, Any]] = {}
    extra = extra_arms(arms, model_name, sampler.model.dtype, tokenizer, prompts, settings_for, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, settings=settings, info=arm_info)
    runs = alternate({"ours": ours, "spin_recipe": spin_recipe,
                      **{name: arm for name, arm in extra.items() if arm.reason is None}}, pairs, label="generation")
    unavailable = {}
    for name, arm in extra.items():
        if arm.reason is not None:  # failed before or during the pairs: no runs kept
            runs.pop(name, None)
            unavailable[name] = arm.reason
    if "compiled_static" in runs:
        arm_info["compiled_static"]["recompiles_measured"] = sum(r["recompiles"] for r in runs["compiled_static"])
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    mean_generated = summarize([r["tokens"] for r in runs["ours"]])["median"] / num_prompts
    bound = decode_bound(model, machine, batch_size, sum(prompt_tokens) / len(prompt_tokens) + mean_generated / 2)
    ours_tps = summarize([r["tokens_per_s"] for r in runs["ours"]])
    top_ops = run_ops = ""
    if profile:
        with Profile(True) as prof:
            sampler.generate(prompts[:batch_size], n=1, max_new_tokens=min(32, max_new_tokens), seed=0,
                             progress=False, **settings)
        top_ops = prof.table
    if profile_run:
        console.print("generation: profiling one whole run of ours ...")
        with Profile(True, rows=15) as prof:
            ours(pairs)  # one more run at the measured size, after the pairs (its own seed and output directory)
        run_ops = prof.table
    console.print(f"generation: ours {ours_tps['median']:.1f} tok/s, decode bound {bound['bound_tokens_per_s']:.0f} "
                  f"tok/s ({bound['binding']})")
    return {
        "settings": {"model": model_name, "prompts": num_prompts, "max_new_tokens": max_new_tokens,
                     "batch_size": batch_size, "dtype": str(model.dtype).replace("torch.", ""), "pairs": pairs,
                     "source": str(source), **settings},
        "runs": runs,
        "tokens_per_s": {arm: summarize([r["tokens_per_s"] for r in rs]) for arm, rs in runs.items()},
        "ratio_ours_over_spin": ratios(runs, "tokens_per_s", "ours", "spin_recipe"),
        "ratio_ours_over": {arm: ratios(runs, "tokens_per_s", "ours", arm) for arm in runs if arm != "ours"},
        "arms": arm_info,
        "unavailable": unavailable,
        # Share of the recipe's decode work spent on rows that already ended: the most that dropping
        # finished rows (which ours does) can save.
        "spin_recipe_finished_row_fraction": summarize([1 - r["tokens"] / r["row_steps"] for r in runs["spin_recipe"]]),
        "decode_bound": bound,
        "ours_over_bound": summarize([r["tokens_per_s"] / bound["bound_tokens_per_s"] for r in runs["ours"]]),
        "ours_decode_step": sampler.decode_step,
        "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
        "profile_ours": top_ops,
        "profile_ours_run": run_ops,
    }
