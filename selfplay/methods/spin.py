"""SPIN pairs: the real SFT answer (chosen) against the previous iterate's own answer (rejected)."""

from __future__ import annotations

from typing import Any

from selfplay.methods.base import Method


def build_spin_pairs(sample_rows: list[dict[str, Any]], iteration: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One pair per generated sample. Ids carry the iteration so mixed iterations never collide.

    Dropped (and counted): prompts without a real answer, empty generations, and generations identical
    to the real answer (the SPIN loss has no signal there).
    """
    pairs, empty, identical, no_reference = [], 0, 0, 0
    for row in sample_rows:
        real = (row.get("reference") or "").strip()
        if not real:
            no_reference += 1
            continue
        for j, sample in enumerate(row["samples"]):
            if not sample.strip():
                empty += 1
                continue
            if sample.strip() == real:
                identical += 1
                continue
            pairs.append({"id": f"{row['id']}#s{j}@it{iteration}", "prompt": row["prompt_messages"],
                          "chosen": real, "rejected": sample})
    return pairs, {"pairs": len(pairs), "dropped_empty": empty, "dropped_identical": identical,
                   "dropped_no_reference": no_reference}


def _build(rows: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    return build_spin_pairs(rows, iteration)


METHOD = Method(
    name="spin",
    summary="real SFT answer vs. the previous iterate's own answer (arXiv 2401.01335)",
    collects="samples",
    build=_build,
    objective="preference",
    default_loss="sigmoid",
    mixes_previous=True,
    names=("real", "generated"),
    margin=True,
)
