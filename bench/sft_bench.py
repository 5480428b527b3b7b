"""Likelihood training: selfplay's ``--method sft`` (the objective RISE and agent-SFT share) against TRL's
``SFTTrainer`` with the loss on the completion only, on the same records and settings.

Arms (each run in a fresh process, :func:`bench.measure.run_worker`):

* ``ours`` — ``run_train`` with ``method: sft``: token NLL of the response, prompts as context, batches packed
  (no padding) with the chunked vocabulary projection.
* ``trl``  — ``SFTTrainer`` on conversational prompt-completion records, ``completion_only_loss=True``
  (padded batches, TRL's own loss).

Both: the same GSM8K train questions (prompt = the question as a user turn, response = the reference
solution), chat template, batch, max_length, fp32 weights and compute, AdamW (TRL's default optimizer),
linear schedule with 10% warm-up, grad clip 1.0, one epoch, no gradient checkpointing. Tokens/s = prompt +
response tokens of every record / the training loop's time (model loading, tokenization, saving excluded);
peak memory = peak RSS above the post-import baseline, as for the DPO arms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.measure import alternate, console, ratios, summarize, worker_arm


def write_sft_records(source: Path, num: int, dest: Path, tokenizer: Any, max_length: int) -> Path:
    """The first ``num`` GSM8K rows of ``source`` that fit ``max_length`` whole (chat-formatted prompt and
    response, with room for the template's closing tokens; the prompt within half of it) as single-response
    training records ``{id, prompt, response}``: neither side truncates, so both train the same tokens (TRL
    cuts the end of a sequence and drops one left without a completion token, ours cuts the prompt first)."""
    from selfplay.data.records import convert_rows
    from selfplay.data.sources import read_rows
    from selfplay.io import write_jsonl

    def fits(r: dict[str, Any]) -> bool:
        prompt = len(tokenizer.apply_chat_template(r["messages"], tokenize=True, add_generation_prompt=True))
        response = len(tokenizer(r["reference"], add_special_tokens=False)["input_ids"])
        return prompt <= max_length // 2 and prompt + response + 4 <= max_length

    records = [g[0] for g in convert_rows(read_rows(str(source))[:20 * num], "gsm8k", show_progress=False).groups]
    kept = [r for r in records if fits(r)][:num]
    write_jsonl(dest, [{"id": r["id"], "prompt": r["messages"], "response": r["reference"]} for r in kept])
    return dest


def run_sft_bench(model_name: str, source: Path, out_dir: Path, machine: dict[str, Any], *, num_examples: int,
                  batch_size: int, max_length: int, pairs: int, lr: float = 1e-5, warmup: bool = True,
                  in_process: bool = False) -> dict[str, Any]:
    """Alternate ours and TRL ``pairs`` times (after one warm-up run of ours on one batch); runs and summaries."""
    from bench.train_bench import _params

    from transformers import AutoTokenizer

    from selfplay.models import resolve_model

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_name))
    records = write_sft_records(source, num_examples, out_dir / "sft_records.jsonl", tokenizer, max_length)
    warm = write_sft_records(source, batch_size, out_dir / "warmup_records.jsonl", tokenizer, max_length)
    base = {"model": model_name, "batch_size": batch_size, "max_length": max_length,
            "max_prompt_length": max_length // 2, "lr": lr, "optimizer": "adamw", "precision": "fp32"}

    def arm(task: str, name: str, **extra: Any):
        return worker_arm(task, name, {**base, **extra}, "records", records, warm, out_dir, in_process)

    arms = {"ours": arm("train-ours", "ours", method="sft"), "trl": arm("sft-trl", "trl")}
    if warmup:
        console.print("[bold]likelihood training[/] warm-up: ours on one batch ...")
        arms["ours"](-1)
    runs = alternate(arms, pairs, warmup=False, label="likelihood training")
    params, peak = _params(model_name), machine["matmul_peak_gflops"].get("float32")
    summary = {name: {"tokens_per_s": summarize([r["tokens_per_s"] for r in rs]),
                      "peak_rss_mib": summarize([r["peak_rss_mib"] for r in rs]),
                      "ru_maxrss_delta_mib": summarize([r["ru_maxrss_delta_mib"] for r in rs]),
                      "train_s": summarize([r["train_s"] for r in rs]),
                      "tokens": summarize([r["tokens"] for r in rs]),
                      # 6 x params per trained token: forward + backward, no reference pass
                      "mfu": summarize([6 * params * r["tokens_per_s"] / (peak * 1e9) for r in rs]) if peak else None}
               for name, rs in runs.items()}
    console.print("likelihood training: " + ", ".join(f"{k} {v['tokens_per_s']['median']:.1f} tok/s"
                                                      for k, v in summary.items()))
    return {"settings": {**base, "records": str(records), "num_examples": num_examples, "epochs": 1, "pairs": pairs,
                         "params": params, "isolation": "in this process (smoke)" if in_process else "in a fresh process"},
            "runs": runs, "summary": summary,
            "ratios": {"ours_over_trl": ratios(runs, "tokens_per_s", "ours", "trl"),
                       "memory_ours_over_trl": ratios(runs, "peak_rss_mib", "ours", "trl")}}
