"""SFT: continued supervised fine-tuning on the real answers SPIN uses — the SPIN paper's baseline.

Nothing is generated: each iteration trains on (prompt, reference) with the plain token-level NLL, so
``selfplay loop --method sft`` evaluated like SPIN shows what self-play adds over more SFT on the same data.
"""

from __future__ import annotations

from typing import Any

from selfplay.methods.base import Method


def build_sft_examples(rows: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict[str, Any]], dict]:
    """One single-response record per prompt with a non-empty reference; prompts without one are counted.
    A record's ``meta.weight`` (a weighted source, e.g. the RISE anchor's finetune.json) becomes its
    ``weight``, which the ``weighted`` loss reads."""
    examples = []
    for r in rows:
        if not (r.get("reference") or "").strip():
            continue
        example = {"id": f"{r['id']}@it{iteration}", "prompt": r["messages"], "response": r["reference"]}
        if "weight" in (r.get("meta") or {}):
            example["weight"] = r["meta"]["weight"]
        examples.append(example)
    return examples, {"examples": len(examples), "dropped_no_reference": len(rows) - len(examples),
                      "weighted": sum("weight" in e for e in examples)}


METHOD = Method(
    name="sft",
    summary="continued supervised fine-tuning on the real answers (the SPIN paper's baseline)",
    collects="references",
    build=build_sft_examples,
    objective="likelihood",
    default_loss="sft",
    names=("response", "response"),
    margin=True,  # SPIN's baseline: compared with SPIN column by column (eval compare)
)
