"""One benchmark arm in a fresh process: ``python -m bench.worker TASK SPEC_JSON RESULT_PATH``.

Tasks: ``train-ours`` (selfplay's ``run_train``, any method), ``train-trl`` (TRL's ``DPOTrainer``, reference
resident or precomputed), ``sft-trl`` (TRL's ``SFTTrainer``, completion-only loss), ``loop`` (selfplay's ``run_loop``, peak memory per iteration). Each writes one JSON
object to RESULT_PATH. Memory is the peak RSS above the RSS measured after all imports and before any
model is loaded, sampled every 20 ms (:class:`bench.measure.RssSampler`); ``ru_maxrss`` minus the same
baseline is recorded as a cross-check (it also sees spikes shorter than 20 ms).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import Profile, RssSampler, max_rss_mib

THREADS = 2


def train_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Time selfplay's training (``spec["method"]``, default SPIN): reference precompute (preference methods)
    + policy-only training, model loading excluded.

    The stage's own functions are wrapped (not changed) to timestamp its phases and count the tokens of
    every batch it builds as separate prompt + response sequences (as TRL runs them and the TRL arm counts
    them), whatever layout ours runs them in (packed: each prompt once, no padding). Without a reference
    pass (likelihood methods) the loop's time starts when its first batch is built.
    """
    import selfplay.core.objectives as objectives
    import selfplay.stages.train as train_stage
    from selfplay.methods import load_config

    cfg = load_config(flags={
        "method": spec.get("method", "spin"), "train.batch_size": spec["batch_size"],
        "train.max_length": spec["max_length"],
        "train.max_prompt_length": spec["max_prompt_length"], "train.lr": spec["lr"],
        "train.precision": spec["precision"], "train.optimizer": spec["optimizer"], "train.epochs": 1.0,
        "train.max_steps": spec.get("max_steps", -1), "train.logging_steps": 10**6, "train.save_steps": 0,
        "train.gradient_checkpointing": False,
    })
    from selfplay.core.packing import sequence_tokens

    marks: dict[str, float] = {}
    tokens = {"reference": 0, "train": 0}
    layout = {"packed": False}
    original_precompute, original_finish, original_batch = (
        train_stage.precompute_reference, train_stage.finish, train_stage.training_batch)

    def precompute(*args: Any, **kwargs: Any) -> Any:
        marks["precompute_start"] = time.perf_counter()
        out = original_precompute(*args, **kwargs)
        marks["precompute_end"] = time.perf_counter()
        return out

    def finish(*args: Any, **kwargs: Any) -> Any:
        marks["train_end"] = time.perf_counter()
        return original_finish(*args, **kwargs)

    def counted_batch(model: Any, examples: list[Any], pad_id: int) -> Any:
        if "precompute_start" not in marks and "train_start" not in marks:
            marks["train_start"] = time.perf_counter()  # no reference pass: the loop starts here
        batch = original_batch(model, examples, pad_id)
        tokens["train" if "precompute_end" in marks or "train_start" in marks else "reference"] += \
            sequence_tokens(examples)
        layout["packed"] = "label_index" in batch
        return batch

    # The reference pass builds its batches in the stage, the training loop through the objective's batch hook.
    train_stage.precompute_reference, train_stage.finish, train_stage.training_batch = precompute, finish, counted_batch
    objectives.training_batch = counted_batch
    try:
        with RssSampler() as rss, Profile(bool(spec.get("profile")), memory=True) as profile:
            result = train_stage.run_train(cfg, spec["model"], Path(spec.get("records") or spec["pairs"]),
                                           Path(spec["out_dir"]))
    finally:  # in-process (smoke) runs call this again: leave the stage as it was
        train_stage.precompute_reference, train_stage.finish, train_stage.training_batch = (
            original_precompute, original_finish, original_batch)
        objectives.training_batch = original_batch
    precompute_s = marks["precompute_end"] - marks["precompute_start"] if "precompute_end" in marks else 0.0
    train_s = marks["train_end"] - marks.get("precompute_end", marks.get("train_start", 0.0))
    return {"tokens": float(tokens["train"]), "reference_tokens": float(tokens["reference"]),
            "precompute_s": precompute_s, "train_s": train_s, "seconds": precompute_s + train_s,
            "steps": float(result.steps), "loss": float(result.metrics.get("loss", float("nan"))),
            "packed": float(layout["packed"]),
            "peak_rss_mib": rss.peak_delta, "ru_maxrss_delta_mib": max_rss_mib() - rss.baseline,
            **({"profile": profile.table, "memory_profile": profile.memory_table} if spec.get("profile") else {})}


def train_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Time TRL's DPOTrainer on the same pairs and settings; model loading and tokenization excluded.

    ``spec["precompute"]``: False = TRL's default (a second, frozen model computes reference log-probs
    every step), True = ``precompute_ref_log_probs`` (one pass before training, reference not resident).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from selfplay.io import read_jsonl
    from selfplay.models import ensure_special_tokens, resolve_model

    marks: dict[str, float] = {"precompute_s": 0.0}

    class TimedDPOTrainer(DPOTrainer):
        """DPOTrainer whose reference precompute (run inside ``__init__``) is timed."""

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            marks["precompute_s"] += time.perf_counter() - t0
            return out

    path = resolve_model(spec["model"])
    rows = read_jsonl(Path(spec["pairs"]))
    # TRL's conversational preference format: completions as assistant message lists.
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    bf16 = spec["precision"] == "bf16"
    args = DPOConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0.1, optim=spec["optimizer"],
        weight_decay=0.0, max_grad_norm=1.0, num_train_epochs=1, max_steps=spec.get("max_steps", -1),
        max_length=spec["max_length"], beta=0.1, loss_type=["sigmoid"], bf16=bf16, fp16=False,
        # Same as ours: no checkpointing (TRL's own default is on; it would cost TRL an extra forward).
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=10**6, disable_tqdm=True, seed=42, dataloader_num_workers=0,
        precompute_ref_log_probs=spec["precompute"],
    )
    with RssSampler() as rss:
        tokenizer = AutoTokenizer.from_pretrained(path)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ensure_special_tokens(policy, tokenizer)
        reference = None
        if not spec["precompute"]:  # loaded here (untimed) rather than by TRL, which would load it the same way
            reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        trainer = TimedDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                                  processing_class=tokenizer)
        t0 = time.perf_counter()
        out = trainer.train()
        train_s = time.perf_counter() - t0
    data = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in
                 zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))
    return {"tokens": float(tokens), "precompute_s": marks["precompute_s"], "train_s": train_s,
            "seconds": marks["precompute_s"] + train_s, "steps": float(out.global_step),
            "loss": float(out.training_loss), "peak_rss_mib": rss.peak_delta,
            "ru_maxrss_delta_mib": max_rss_mib() - rss.baseline}


def sft_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Time TRL's SFTTrainer on the same records and settings: conversational prompt-completion data with
    ``completion_only_loss`` (the loss on the response tokens only, as ours); model loading and tokenization
    excluded, ``trainer.train()`` timed."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from selfplay.io import read_jsonl
    from selfplay.models import ensure_special_tokens, resolve_model

    path = resolve_model(spec["model"])
    rows = read_jsonl(Path(spec["records"]))
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["response"]}]}
                                 for r in rows])
    args = SFTConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0.1,
        optim={"adamw": "adamw_torch"}.get(spec["optimizer"], spec["optimizer"]),  # torch's AdamW, as ours
        weight_decay=0.0, max_grad_norm=1.0, num_train_epochs=1, max_length=spec["max_length"],
        completion_only_loss=True, packing=False, bf16=spec["precision"] == "bf16", fp16=False,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, seed=42, dataloader_num_workers=0,
    )
    with RssSampler() as rss:
        tokenizer = AutoTokenizer.from_pretrained(path)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ensure_special_tokens(policy, tokenizer)
        trainer = SFTTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer)
        t0 = time.perf_counter()
        out = trainer.train()
        train_s = time.perf_counter() - t0
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    return {"tokens": float(tokens), "precompute_s": 0.0, "train_s": train_s, "seconds": train_s,
            "steps": float(out.global_step), "loss": float(out.training_loss), "peak_rss_mib": rss.peak_delta,
            "ru_maxrss_delta_mib": max_rss_mib() - rss.baseline}


def loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``selfplay loop`` in-process; split time and peak RSS by iteration (the iter_k dir appearing)."""
    from selfplay.methods import load_config
    from selfplay.stages.loop import run_loop

    cfg = load_config(flags=spec["flags"])
    run_dir = Path(cfg.run_dir)
    iters = cfg.loop.iters

    def phase() -> str:
        for k in range(iters - 1, -1, -1):
            if (run_dir / f"iter_{k}").exists():
                return f"iter_{k}"
        return "setup"

    t0 = time.perf_counter()
    with RssSampler(phase_of=phase) as rss:
        run_loop(cfg)
    total = time.perf_counter() - t0
    starts = sorted((p["start_s"], name) for name, p in rss.phases.items())
    out: dict[str, Any] = {"total_s": total, "peak_rss_mib": rss.peak_delta, "iterations": {}}
    for i, (start, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else total
        entry = {"seconds": end - start, "peak_rss_mib": rss.phases[name]["peak_mib"]}
        if name == "setup":
            out["setup"] = entry
        else:
            out["iterations"][name] = entry
    return out


TASKS = {"train-ours": train_ours, "train-trl": train_trl, "sft-trl": sft_trl, "loop": loop}


def main() -> None:
    import torch

    task, spec, result_path = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(THREADS)
    # Import the heavy libraries of every task before the RSS baseline, so the baseline is "code loaded,
    # no model yet" for all arms alike.
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import selfplay.stages.loop  # noqa: F401
    import selfplay.stages.train  # noqa: F401

    result = TASKS[task](spec)
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
