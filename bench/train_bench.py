"""Training: selfplay's SPIN training against TRL's DPOTrainer on the same pairs and settings.

Arms (each run in a fresh process, see :func:`bench.measure.run_worker`):

* ``ours``            — ``run_train``: reference log-probs precomputed once, then the policy alone trains.
* ``trl_default``     — ``DPOTrainer`` as configured by default: a frozen reference model stays resident
  and runs a forward pass every step.
* ``trl_precompute``  — ``DPOTrainer`` with ``precompute_ref_log_probs=True``.
* ``ours_bf16``       — optional extra arm: ours under bf16 autocast (the other arms are fp32).

Trained tokens/s = non-pad tokens of the chosen+rejected sequences (prompt included) of one epoch over
the time of the reference pass (where there is one) plus the training loop; model loading,
tokenization and saving are excluded. MFU counts 6·params per trained token for the policy plus 2·params
for the reference forward, which every arm runs once per token (ours and TRL-precompute before
training, TRL-default during it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from bench.measure import alternate, console, ratios, run_worker, summarize, worker_arm


def build_spin_pairs(model_name: str, source: Path, num: int, max_new_tokens: int, cache_dir: Path) -> Path:
    """SPIN pairs from GSM8K train questions: chosen = reference solution, rejected = the model's own answer.

    The generations are made once with selfplay's sampler and cached in ``cache_dir`` (keyed by model,
    data file, count and length), so reruns train on identical pairs.
    """
    from selfplay.core.samplers import format_prompt, make_sampler
    from selfplay.data.records import convert_rows
    from selfplay.data.sources import read_rows
    from selfplay.io import write_jsonl
    from selfplay.models import resolve_model

    model_dir = resolve_model(model_name)
    key = hashlib.sha256(json.dumps([model_dir, str(source), source.stat().st_size, num, max_new_tokens])
                         .encode()).hexdigest()[:12]
    path = cache_dir / f"spin_pairs_{key}.jsonl"
    if path.exists():
        return path
    records = [g[0] for g in convert_rows(read_rows(str(source))[:num], "gsm8k", show_progress=False).groups]
    sampler = make_sampler("hf", model_dir, batch_size=min(16, num), device="cpu")
    prompts = [format_prompt(sampler.tokenizer, r["messages"], "chat") for r in records]
    console.print(f"training pairs: generating {num} rejected answers with {model_name} (cached in {path})")
    samples = sampler.generate(prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=0)
    # An empty generation cannot be a training target: fall back to another question's reference then.
    rows = [{"id": r["id"], "prompt": r["messages"], "chosen": r["reference"],
             "rejected": s[0] if s[0].strip() else records[(i + 1) % num]["reference"]}
            for i, (r, s) in enumerate(zip(records, samples))]
    write_jsonl(path, rows)
    return path


def profile_ours(model_name: str, pairs_path: Path, out_dir: Path, *, batch_size: int, max_length: int,
                 in_process: bool = False) -> dict[str, str]:
    """Top ops of our training on one batch (reference pass + one optimizer step): by self CPU time
    (``time``) and by memory allocated (``memory``)."""
    from selfplay.io import read_jsonl, write_jsonl

    batch = out_dir / "profile_pairs.jsonl"
    write_jsonl(batch, read_jsonl(pairs_path)[:batch_size])
    work = out_dir / "work" / "profile"
    shutil.rmtree(work, ignore_errors=True)
    spec = {"model": model_name, "batch_size": batch_size, "max_length": max_length,
            "max_prompt_length": max_length // 2, "lr": 5e-7, "optimizer": "rmsprop", "precision": "fp32",
            "pairs": str(batch), "out_dir": str(work), "profile": True}
    r = run_worker("train-ours", spec, out_dir / "logs" / "profile.log", in_process=in_process)
    shutil.rmtree(work, ignore_errors=True)
    return {"time": r["profile"], "memory": r["memory_profile"]}


def workload_shape(model_name: str, pairs_path: Path, *, batch_size: int, max_length: int) -> dict[str, float]:
    """Where our training spends compute on positions that carry no learning signal, measured on these pairs.

    ``padding_fraction``: share of attention positions in our batches that are padding (our batch order);
    ``repeated_prompt_fraction``: share of trained tokens that are the second copy of a prompt (each pair
    runs its prompt twice, with chosen and with rejected) — what sharing the prompt prefix would save;
    ``logit_waste_fraction``: share of the positions given to the LM head (the last R+1 of each row,
    ``logits_to_keep``) that predict no response token.
    """
    from transformers import AutoTokenizer

    from selfplay.core.examples import load_examples, tokenize_records
    from selfplay.core.logprobs import example_batch
    from selfplay.models import pad_token_id, resolve_model
    from selfplay.stages.train_io import batch_order

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_name))
    examples, _ = tokenize_records(load_examples(pairs_path, "pair"), tokenizer, prompt_format="chat",
                                   max_length=max_length, max_prompt_length=max_length // 2)
    pad_id = pad_token_id(tokenizer)
    real = padded = labels = logit_rows = prompt = 0
    for idx in batch_order([e.length for e in examples], batch_size, 1.0, 42):
        batch = example_batch([examples[i] for i in idx], pad_id)
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
        labels += int(batch["label_mask"].sum())
        logit_rows += batch["label_mask"].numel() + batch["label_mask"].shape[0]  # R+1 kept positions per row
        prompt += sum(len(examples[i].prompt_ids) for i in idx)
    return {"padding_fraction": 1 - real / padded, "repeated_prompt_fraction": prompt / real,
            "logit_waste_fraction": 1 - labels / logit_rows}


def mfu(tokens_per_s: float, params: float, peak_gflops: float) -> float:
    """Model FLOP utilisation: (6 + 2)·params FLOPs per trained token (policy fwd+bwd, reference fwd)."""
    return 8 * params * tokens_per_s / (peak_gflops * 1e9)


def _params(model_name: str) -> float:
    """Parameter count (tied weights once) from the model's config, without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfplay.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return float(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()))


def run_training_bench(model_name: str, pairs_path: Path, out_dir: Path, machine: dict[str, Any], *, batch_size: int,
                       max_length: int, pairs: int, bf16_arm: bool, lr: float = 5e-7, warmup: bool = True,
                       in_process: bool = False) -> dict[str, Any]:
    """A/B/C(/D) the training arms ``pairs`` times after a one-pair warm-up; returns runs and summaries."""
    from selfplay.io import read_jsonl, write_jsonl

    base = {"model": model_name, "batch_size": batch_size, "max_length": max_length,
            "max_prompt_length": max_length // 2, "lr": lr, "optimizer": "rmsprop", "precision": "fp32"}
    # Warm-up: our arm on one pair for one step. Every arm runs in a fresh process, so what a warm-up can
    # warm is the page cache (libraries, model file), shared by all arms: one arm is enough.
    warm_pairs = out_dir / "warmup_pairs.jsonl"
    write_jsonl(warm_pairs, read_jsonl(pairs_path)[:1])

    def arm(task: str, name: str, **extra: Any):
        return worker_arm(task, name, {**base, **extra}, "pairs", pairs_path, warm_pairs, out_dir, in_process)

    arms = {"ours": arm("train-ours", "ours"),
            "trl_default": arm("train-trl", "trl_default", precompute=False),
            "trl_precompute": arm("train-trl", "trl_precompute", precompute=True)}
    if bf16_arm:
        arms["ours_bf16"] = arm("train-ours", "ours_bf16", precision="bf16")
    if warmup:
        console.print("[bold]training[/] warm-up: ours on one pair ...")
        arms["ours"](-1)
    runs = alternate(arms, pairs, warmup=False, label="training")

    params = _params(model_name)
    peaks = machine["matmul_peak_gflops"]
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        peak = peaks["bfloat16" if name.endswith("bf16") else "float32"]
        summary[name] = {
            "tokens_per_s": summarize([r["tokens_per_s"] for r in rs]),
            "peak_rss_mib": summarize([r["peak_rss_mib"] for r in rs]),
            "ru_maxrss_delta_mib": summarize([r["ru_maxrss_delta_mib"] for r in rs]),
            "precompute_s": summarize([r["precompute_s"] for r in rs]),
            "train_s": summarize([r["train_s"] for r in rs]),
            "tokens": summarize([r["tokens"] for r in rs]),
            "mfu": summarize([mfu(r["tokens_per_s"], params, peak) for r in rs]),
        }
    ratio = {
        "ours_over_trl_default": ratios(runs, "tokens_per_s", "ours", "trl_default"),
        "ours_over_trl_precompute": ratios(runs, "tokens_per_s", "ours", "trl_precompute"),
        "memory_ours_over_trl_default": ratios(runs, "peak_rss_mib", "ours", "trl_default"),
        "memory_ours_over_trl_precompute": ratios(runs, "peak_rss_mib", "ours", "trl_precompute"),
    }
    if bf16_arm:
        ratio["ours_bf16_over_trl_default"] = ratios(runs, "tokens_per_s", "ours_bf16", "trl_default")
    console.print("training: " + ", ".join(f"{k} {v['tokens_per_s']['median']:.1f} tok/s" for k, v in summary.items()))
    n_pairs = len(read_jsonl(pairs_path))
    shape = workload_shape(model_name, pairs_path, batch_size=batch_size, max_length=max_length)
    isolation = "in this process (smoke)" if in_process else "in a fresh process"
    return {"settings": {**base, "pairs_file": str(pairs_path), "num_pairs": n_pairs, "epochs": 1, "pairs": pairs,
                         "params": params, "isolation": isolation,
                         "rejected": "the model's own sampled answer (temperature 1.0), generated once and cached"},
            "runs": runs, "summary": summary, "ratios": ratio, "workload_shape": shape}
