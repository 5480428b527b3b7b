"""Render ``results.json`` as the markdown of ``bench/RESULTS.md``."""

from __future__ import annotations

from typing import Any

from bench import report_sections as sections

# (what, results path, comparison, target): checked against the median of per-pair ratios (per-run
# fractions for the decode limit).
TARGETS = [
    ("generation tokens/s, ours / SPIN recipe", ("generation", "ratio_ours_over_spin"), ">=", 2.0),
    ("generation tokens/s, ours / memory-bound limit at batch 16", ("generation", "ours_over_bound"), ">=", 0.3),
    ("training tokens/s, ours / TRL default", ("training", "ratios", "ours_over_trl_default"), ">=", 1.5),
    ("training tokens/s, ours / TRL precompute", ("training", "ratios", "ours_over_trl_precompute"), ">=", 1.0),
    ("training peak memory, ours / TRL default", ("training", "ratios", "memory_ours_over_trl_default"), "<=", 0.7),
    ("generation tokens/s in fp32, ours / SPIN recipe", ("generation_fp32", "ratio_ours_over_spin"), ">=", 2.0),
    ("generation tokens/s, ours / llama.cpp (each at its fastest batch)", ("llamacpp", "ratio_ours_over_llama_cpp"),
     ">=", 1.0),
    ("generation tokens/s, the generate stage's default batch / the fastest swept", ("batch", "default_over_best"),
     ">=", 0.9),
    ("likelihood training tokens/s, ours / TRL SFTTrainer", ("sft", "ratios", "ours_over_trl"), ">=", 1.5),
    ("likelihood training peak memory, ours / TRL SFTTrainer", ("sft", "ratios", "memory_ours_over_trl"), "<=", 0.7),
    ("agent rollouts trajectories/s, ours / anchor loop", ("rollouts", "agent", "ratio_episodes"), ">=", 5.0),
    ("RISE rollouts episodes/s, ours / anchor loop", ("rollouts", "rise", "ratio_episodes"), ">=", 5.0),
    ("5-turn sequential evaluation problems/s, ours / anchor loop", ("rollouts", "multiturn", "ratio_episodes"),
     ">=", 5.0),
    ("generation with one competing process / alone (an even share: 0.5)", ("contention", "contended_over_alone"),
     ">=", 0.4),
    ("generation alone, thread policy / libgomp's default spin", ("contention", "policy_over_spinning_alone"),
     ">=", 0.95),
]


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The node at ``path``; a section recorded as ``{"same_as": OTHER}`` (the fp32 generation section on a CPU
    that generates in fp32 anyway) is read from section OTHER."""
    top = tree.get(path[0]) if path else None
    if isinstance(top, dict) and "same_as" in top:
        path = (top["same_as"], *path[1:])
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _spread(s: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    """'median (min–max)' of a summary."""
    if not s:
        return "–"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured median ratio and whether it is met (None when not measured)."""
    rows = []
    for what, path, op, target in TARGETS:
        s = _get(results, path)
        value = s["median"] if s else None
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        rows.append({"what": what, "target": f"{op} {target}", "value": value, "spread": s, "met": met})
    return rows


SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


def _machine(m: dict[str, Any]) -> list[str]:
    peaks, bw = m["matmul_peak_gflops"], m["memory_bandwidth"]
    return [
        "## Machine", "",
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']} ({', '.join(m['cpu_flags'])}) |",
        f"| cores / threads used | {m['cores']} / {m['threads_used']} |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| python / torch / transformers / trl | {m['python']} / {m['torch']} / {m['transformers']} / {m['trl']} |",
        f"| matmul peak, {m['threads_used']} threads (measured for the dtypes this run used) | "
        + ", ".join(f"{SHORT_DTYPE.get(k, k)} {v:.0f} GFLOP/s" for k, v in peaks.items()) + " |",
        f"| CPU kind | {'bf16 instructions' if {'avx512_bf16', 'amx_bf16'} & set(m['cpu_flags']) else 'no bf16 units'}"
        " (bf16 can be fast only with avx512_bf16 or amx_bf16; without them `--gen-dtype auto` runs every arm in "
        "fp32) |",
        *([f"| `dtype: auto` on this CPU | {m['auto_dtype']} |"] if "auto_dtype" in m else []),
        f"| memory bandwidth (measured, 256 MiB buffers) | read {bw['read_gbs']:.1f} GB/s, "
        f"copy {bw['copy_gbs']:.1f} GB/s (read+write) |",
        f"| load average at start (1/5/15 min) | {' / '.join(f'{x:.2f}' for x in m['load_average_at_start'])} |",
        "",
    ]


def _load_note(meta: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Other processes on the machine slow every arm; say how busy it was (2 cores: above ~1.5 is busy)."""
    end = meta.get("load_average_at_end")
    if not end:
        return []
    start = machine["load_average_at_start"][0]
    return [f"Load average (1 min) at start {start:.2f}, at end {end[0]:.2f}, 15-min at end {end[2]:.2f}: on 2 cores "
            "anything above ~1.5 means other processes were competing for the CPU; alternating the arms spreads "
            "that over both sides of each ratio, but absolute numbers and min–max spreads suffer.", ""]


def _generation(g: dict[str, Any]) -> list[str]:
    s, b = g["settings"], g["decode_bound"]
    lines = [
        "## 1. Generation: our generate stage (HF backend) vs the SPIN recipe (`model.generate`) and transformers' "
        "own routes", "",
        f"{s['prompts']} GSM8K test questions (dataset order), {s['model']} in {s['dtype']}, batch {s['batch_size']}, "
        f"max_new_tokens {s['max_new_tokens']}, temperature {s['temperature']}, top_p {s['top_p']}, chat template. "
        f"{s['pairs']} alternating rounds after a warm-up. Every arm decodes at most {s['batch_size']} rows at "
        "once: the recipe in fixed batches until each batch's longest row ends, ours continuously (finished rows "
        "leave, waiting prompts take their place). Tokens = generated tokens up to and including EOS "
        "(padding not counted). Ours is timed end to end through `run_generate` (prompt formatting, shard "
        "files, manifest) with the model already loaded; the recipe's loop is timed around its batches."
        + (f" Ours decoded each step by {g['ours_decode_step']}." if g.get("ours_decode_step") else ""), "",
    ] + _transformers_arms_intro(g) + [
        "| arm | generated tokens/s, median (min–max) | seconds, median |", "|---|---|---|",
    ]
    for arm, rs in g["runs"].items():
        secs = sorted(r["seconds"] for r in rs)
        lines.append(f"| {arm} | {_spread(g['tokens_per_s'][arm])} | {secs[len(secs) // 2]:.1f} |")
    lines += [
        "", "**Ratio ours / SPIN recipe (median of per-pair ratios): "
        f"{_spread(g['ratio_ours_over_spin'], '{:.2f}')}x**",
    ]
    lines += _transformers_arms_ratios(g)
    lines += [
        "", f"The recipe keeps decoding rows that already emitted EOS until the longest row of the batch ends: "
        f"{100 * g['spin_recipe_finished_row_fraction']['median']:.0f}% of its decode rows are such rows.",
        "", "Decode-bound limit on this machine at batch " f"{s['batch_size']}:", "",
        f"- bytes read per decode step = weights {b['weight_bytes'] / 1e6:.0f} MB + KV cache "
        f"{s['batch_size']} rows x {b['mean_context']:.0f} tokens (mean context) x {b['kv_bytes_per_token'] / 1e3:.1f} "
        f"kB/token = {b['bytes_per_step'] / 1e6:.0f} MB",
        f"- max decode steps/s = read bandwidth / bytes per step = {b['max_steps_per_s']:.1f}; x batch "
        f"{s['batch_size']} = **{b['memory_bound_tokens_per_s']:.0f} tokens/s (memory bound)**",
        f"- compute bound = matmul peak / (2 x {b['params'] / 1e6:.0f}M params) = "
        f"{b['compute_bound_tokens_per_s']:.0f} tokens/s",
        f"- binding limit: {b['binding']}, {b['bound_tokens_per_s']:.0f} tokens/s; ours reaches "
        f"**{100 * g['ours_over_bound']['median']:.0f}%** of it", "",
    ]
    if g.get("profile_ours_run"):
        lines += _profile("Ours, one whole run at the measured size (`--profile`; top 15 ops by self CPU time)",
                          g["profile_ours_run"])
    return lines


def _transformers_arms_intro(g: dict[str, Any]) -> list[str]:
    """What the transformers arms are, as far as they ran (results of runs before these arms existed have none)."""
    arms, unavailable = g.get("arms", {}), g.get("unavailable", {})
    lines = []
    if "hf_continuous" in arms:
        c = arms["hf_continuous"]
        lines.append(f"`hf_continuous`: transformers' continuous batching, one `model.generate_batch` call for all "
                     f"prompts (paged KV cache, finished rows replaced by waiting prompts), attention "
                     f"`{c['attn_implementation']}`, `max_requests_per_batch` {c['max_requests_per_batch']} (at most "
                     f"that many rows per forward pass), {c['num_blocks']} cache blocks of {c['page_size']} tokens, "
                     f"`max_batch_tokens` {c['max_batch_tokens']}; timed around the call (tokenization, cache "
                     "allocation, its generation thread and tear-down included" + _to_last_token(g) + ").")
    if "compiled_static" in arms:
        c = arms["compiled_static"]
        warm = (f"; its compile warm-up (untimed, one 4-token `generate` per distinct batch shape) took "
                f"{c['warmup_s']:.0f} s and built {c['warmup_graphs']:.0f} graphs") if "warmup_s" in c else ""
        recompiles = (f"; graphs compiled during the measured runs: {c['recompiles_measured']:.0f}"
                      if "recompiles_measured" in c else "")
        lines.append("`compiled_static`: transformers' documented fast-decoding route (`llm_optims`): the recipe's "
                     "batches through `model.generate(..., cache_implementation=\"static\")` with `model.forward = "
                     f"torch.compile(model.forward, mode=\"{c['mode']}\", fullgraph={c['fullgraph']})`, static cache "
                     f"of {c['max_cache_len']} positions for every batch{warm}{recompiles}.")
    lines += [f"`{arm}` could not run on this machine: {reason}" for arm, reason in unavailable.items()]
    return [f"- {item}" for item in lines] + [""] if lines else []


def _to_last_token(g: dict[str, Any]) -> str:
    runs = g["runs"].get("hf_continuous", [])
    if not runs or "seconds_to_last_token" not in runs[0]:
        return ""
    share = sorted(r["seconds_to_last_token"] / r["seconds"] for r in runs)[len(runs) // 2]
    return f"; the last token came at {100 * share:.0f}% of the call's time, median"


def _transformers_arms_ratios(g: dict[str, Any]) -> list[str]:
    others = {arm: r for arm, r in g.get("ratio_ours_over", {}).items() if arm != "spin_recipe"}
    lines = [f"- ratio ours / {arm} (median of per-pair ratios): {_spread(r, '{:.2f}')}x"
             for arm, r in others.items()]
    lines += [f"- ratio ours / {arm}: not measured ({reason})" for arm, reason in g.get("unavailable", {}).items()]
    return ["", *lines] if lines else []


def _training(t: dict[str, Any]) -> list[str]:
    s = t["settings"]
    lines = [
        "## 2. Training: our SPIN training vs TRL `DPOTrainer`", "",
        f"{s['num_pairs']} SPIN pairs from GSM8K train questions (chosen = reference solution, rejected = "
        f"{s['rejected']}), {s['model']}, 1 epoch, batch {s['batch_size']}, max_length {s['max_length']}, "
        f"RMSprop lr {s['lr']}, linear schedule, LR warm-up 10%, grad clip 1.0, sigmoid loss beta 0.1, fp32 unless "
        "named, no gradient checkpointing in any arm (TRL's default turns it on; it would add a forward pass). "
        f"{s['pairs']} alternating rounds after a one-pair warm-up, each run {s['isolation']}.", "",
        "Tokens/s = non-pad tokens of chosen+rejected sequences (prompt included) / (reference pass + training "
        "loop); **the reference precompute time is included in ours and in TRL-precompute's time**; model "
        "loading, tokenization and saving are excluded. Peak memory = peak RSS sampled every 20 ms in the arm's "
        "own process, minus the RSS after imports and before any model was loaded (so it includes the weights, "
        "the resident reference model where there is one, gradients, optimizer state and activations); "
        "`ru_maxrss` minus the same baseline is the cross-check. MFU = 8 x params x tokens/s / matmul peak "
        "(6 for the policy's forward+backward, 2 for the reference forward every arm runs once per token).", "",
        "| arm | tokens/s, median (min–max) | ref. precompute s | train loop s | peak RSS MiB, median (min–max) "
        "| ru_maxrss MiB | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, v in t["summary"].items():
        lines.append(f"| {arm} | {_spread(v['tokens_per_s'])} | {v['precompute_s']['median']:.1f} | "
                     f"{v['train_s']['median']:.1f} | {_spread(v['peak_rss_mib'], '{:.0f}')} | "
                     f"{v['ru_maxrss_delta_mib']['median']:.0f} | {100 * v['mfu']['median']:.1f}% |")
    lines += ["", "Ratios (median of per-round ratios, min–max):", ""]
    lines += [f"- {k.replace('_', ' ')}: {_spread(v, '{:.2f}')}" for k, v in t["ratios"].items()]
    w = t.get("workload_shape")
    if w:
        packed = any(r.get("packed") for r in t.get("runs", {}).get("ours", []))
        lead = ("What the left-padded layout (TRL's, and ours before packing) spends without learning signal on "
                "these pairs; ours trains them packed, which removes the padding and the repeated prompt: " if packed
                else "Compute our training spends without learning signal, measured on these pairs and our batches: ")
        lines += ["", lead + f"padding {100 * w['padding_fraction']:.0f}% of attention positions; the repeated prompt copy "
                  f"{100 * w['repeated_prompt_fraction']:.0f}% of trained tokens; "
                  f"{100 * w['logit_waste_fraction']:.0f}% of the LM-head positions predict no response token."]
    return lines + [""]


def _scaling(c: dict[str, Any]) -> list[str]:
    s, fit = c["settings"], c["size_fit"]
    lines = [
        "## 3. Scaling of `selfplay loop`", "",
        f"SPIN on GSM8K train questions, {s['model']}, generate max_new_tokens {s['max_new_tokens']}, train "
        f"max_length {s['max_length']} batch {s['train_batch_size']} precision {s['precision']}, eval on "
        f"{s['eval_num']} held-out prompts, mix_previous off. One run per point (fresh process); an iteration's "
        "time covers generate + pairs + train + eval; peak = RSS above the post-import baseline.", "",
        "| prompts per iteration | iteration s | s per prompt | peak RSS MiB |", "|---|---|---|---|",
    ]
    for n, v in c["by_prompts"].items():
        lines.append(f"| {n} | {v['seconds']:.1f} | {v['seconds'] / int(n):.2f} | {v['peak_rss_mib']:.0f} |")
    lines += [
        "", f"Linear fit: {fit['intercept_s']:.1f} s + {fit['seconds_per_prompt']:.2f} s/prompt, R² = {fit['r2']:.3f}; "
        f"largest / smallest = {fit['largest_over_smallest']:.2f} for a {s['sizes'][-1] / s['sizes'][0]:.0f}x "
        "larger workload.", "",
        f"| iteration ({s['iter_prompts']} prompts each) | seconds | peak RSS MiB |", "|---|---|---|",
    ]
    for k, v in c["by_iteration"].items():
        lines.append(f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mib']:.0f} |")
    lines += ["", f"Peak spread across iterations: {c['iteration_peak_spread_mib']:.0f} MiB "
              f"(last / first = {c['iteration_peak_last_over_first']:.2f}).", ""]
    return lines


def _processes(c: dict[str, Any]) -> list[str]:
    s, g, t, x = c["settings"], c["generation"], c["training"], c["speedup"]
    one, two = "1 process", "2 processes"
    lines = [
        "## 4. Scale-out: 1 vs 2 processes, one thread each", "",
        f"The real commands with `launch.num_processes` 1 or 2 and `OMP_NUM_THREADS=1` (each generation worker "
        f"and each training rank on one thread), {s['model']}, {s['dtype']}, {s['rounds']} alternating round(s). "
        f"Generation: `selfplay generate`, {s['prompts']} GSM8K train questions x {s['n']} samples, max_new_tokens "
        f"{s['max_new_tokens']}, batch {s['gen_batch_size']}; tokens/s = sample tokens / the command's wall time "
        f"(start-up and model load included). Training: `selfplay train`, {s['pairs']} SPIN pairs, max_length "
        f"{s['max_length']}, batch {s['train_batch_size']} per process, {s['accumulation']} batches per step in "
        f"all (1 process accumulates {s['accumulation']}, each of 2 processes {s['accumulation'] // 2}: the same "
        "updates, one gradient all-reduce per step); tokens/s = the training loop's own (all processes' non-pad "
        "tokens per second of the loop; reference pass and start-up excluded).", "",
        "| work | 1 process | 2 processes | 2 / 1 |", "|---|---|---|---|",
        f"| generation tokens/s | {_spread(g[one]['tokens_per_s'])} | {_spread(g[two]['tokens_per_s'])} | "
        f"{_spread(x['generation_tokens_per_s'], '{:.2f}')} |",
        f"| generation command s | {_spread(g[one]['seconds'])} | {_spread(g[two]['seconds'])} | |",
        f"| training loop tokens/s | {_spread(t[one]['loop_tokens_per_s'])} | {_spread(t[two]['loop_tokens_per_s'])} | "
        f"{_spread(x['training_loop_tokens_per_s'], '{:.2f}')} |",
        f"| training command s | {_spread(t[one]['seconds'])} | {_spread(t[two]['seconds'])} | "
        f"{_spread(x['training_wall'], '{:.2f}')} (speed-up) |", "",
    ]
    return lines


def _profile(title: str, table: str) -> list[str]:
    return [f"### {title}", "", "```", table.strip(), "```", ""] if table else []


def render(results: dict[str, Any]) -> str:
    """The whole RESULTS.md: header, targets, machine, one section per benchmark that ran, profiles."""
    meta = results["meta"]
    lines = [
        "# Benchmark results", "",
        f"Generated by `{meta['command'].strip()}` on {meta['date']} in {meta['total_minutes']:.1f} minutes "
        "(do not edit by hand; rerun `make bench`). Medians over alternating runs; min–max in parentheses.", "",
        "## Targets", "", "| target | required | measured (median, min–max) | |", "|---|---|---|---|",
    ]
    for row in target_rows(results):
        verdict = {True: "met", False: "**missed**", None: "not run"}[row["met"]]
        lines.append(f"| {row['what']} | {row['target']} | {_spread(row['spread'], '{:.3f}')} | {verdict} |")
    lines += [""] + [f"Skipped: {s}" for s in meta.get("skipped", [])]
    lines += [f"Rerun: {s}" for s in meta.get("reruns", [])] + [""]
    lines += _machine(results["machine"]) + _load_note(meta, results["machine"])
    if "generation" in results:
        lines += _generation(results["generation"])
    if "generation_fp32" in results:
        lines += sections.generation_fp32(results["generation_fp32"])
    if "batch" in results:
        lines += sections.batch(results["batch"])
    if "llamacpp" in results:
        lines += sections.llamacpp(results["llamacpp"])
    if "training" in results:
        lines += _training(results["training"])
    if "sft" in results:
        lines += sections.sft(results["sft"])
    if "scaling" in results:
        lines += _scaling(results["scaling"])
    if "processes" in results:
        lines += _processes(results["processes"])
    if "rollouts" in results:
        lines += sections.rollouts(results["rollouts"])
    if "contention" in results:
        lines += sections.contention(results["contention"])
    notes = results.get("notes", [])
    profiles = _profile("Our sampler, one batch (top ops by self CPU time)",
                        results.get("generation", {}).get("profile_ours", ""))
    training_profile = results.get("training", {}).get("profile_ours", {})
    profiles += _profile("Our training, reference pass + one step on one batch (top ops by self CPU time)",
                         training_profile.get("time", ""))
    profiles += _profile("Our training, same run (top ops by memory they allocate)", training_profile.get("memory", ""))
    if notes or profiles:
        lines += ["## What bounds the missed targets", ""] + [f"- {n}" for n in notes] + [""] + profiles
    return "\n".join(lines).rstrip() + "\n"
