"""``selfplay eval preference``: how well a trained judge (GPM or Bradley-Terry head) orders held-out pairs.

Per pair the judge's score s = s(chosen > rejected) (GPM) or r_chosen - r_rejected (BT), exactly as training
computed it (:mod:`selfplay.core.preference_model`). Reported: **accuracy** (strict: s > 0; a tie counts as wrong,
as RewardBench and the GPM repo's evaluation count it) with a 95% bootstrap interval over prompts, the mean
**prob** sigma((s - margin) / tau) and the **loss** -log of it (the training loss). Rows that name a ``subset``
get per-subset accuracies.

``--format rewardbench``: rows ``{prompt, chosen, rejected, subset}`` (every row must name its subset); the
four sections are RewardBench's (allenai/reward-bench ``rewardbench/constants.py``: ``SUBSET_MAPPING``), each
the mean of its subsets' accuracies weighted by RewardBench's ``EXAMPLE_COUNTS`` (its
``calculate_scores_per_section``; PRM math up-weighted to count as much as the code subsets), and the score is
the plain mean of the sections, as its leaderboard reports it. Sections without rows are listed as missing
and left out of that mean; subsets outside the map are reported but belong to no section.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

# allenai/reward-bench rewardbench/constants.py
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46, "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
FORMATS = ("pairs", "rewardbench")


def pair_scores(model: Any, tokenizer: Any, pairs: list[dict[str, Any]], *, batch_size: int,
                max_length: int) -> torch.Tensor:
    """s(chosen > rejected) [n] for canonical pairs: the GPM score with the chosen row's gates, or r_w - r_l."""
    from selfplay.core.judge_losses import gpm_score
    from selfplay.core.preference_model import embed

    conversations = [(p["prompt"], p[side]) for side in ("chosen", "rejected") for p in pairs]
    values, gates = embed(model, tokenizer, conversations, batch_size=batch_size, max_length=max_length)
    v_w, v_l = values.chunk(2)
    if values.shape[-1] == 1:
        return v_w[:, 0] - v_l[:, 0]
    return gpm_score(v_w, v_l, gates.chunk(2)[0])


def bootstrap_interval(values: list[float], groups: list[str], *, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``, resampling whole groups (prompts)."""
    by_group: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        by_group.setdefault(g, []).append(v)
    sums = [(sum(v), len(v)) for v in by_group.values()]
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        picked = [sums[rng.randrange(len(sums))] for _ in sums]
        means.append(sum(s for s, _ in picked) / sum(n for _, n in picked))
    means.sort()
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int(round((1 - tail) * (resamples - 1)))]


def summarize(scores: torch.Tensor, margins: torch.Tensor, tau: float, groups: list[str]) -> dict[str, Any]:
    """n, accuracy (s > 0) with its 95% interval over prompts, mean prob and loss at ``tau``."""
    correct = (scores > 0).float()
    logits = (scores - margins) / tau
    low, high = bootstrap_interval(correct.tolist(), groups)
    return {"n": len(scores), "prompts": len(set(groups)), "accuracy": correct.mean().item(),
            "accuracy_ci95": [low, high], "prob": torch.sigmoid(logits).mean().item(),
            "loss": -torch.nn.functional.logsigmoid(logits).mean().item()}


def rewardbench_sections(subset_accuracy: dict[str, float]) -> dict[str, Any]:
    """RewardBench's four sections (example-count weighted subset means) and their plain mean."""
    sections: dict[str, float] = {}
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if s in subset_accuracy]
        if present:
            weights = [REWARDBENCH_EXAMPLE_COUNTS[s] for s in present]
            sections[section] = sum(subset_accuracy[s] * w for s, w in zip(present, weights)) / sum(weights)
    known = {s for subsets in REWARDBENCH_SECTIONS.values() for s in subsets}
    return {"sections": sections, "score": sum(sections.values()) / len(sections) if sections else None,
            "missing_sections": [s for s in REWARDBENCH_SECTIONS if s not in sections],
            "unmapped_subsets": sorted(s for s in subset_accuracy if s not in known)}


def evaluate_preference(model_path: str, data: str, out_dir: Path, *, fmt: str = "pairs", split: str = "train",
                        batch_size: int = 8,
                        max_length: int = 4096, device: str = "auto") -> dict[str, Any]:
    """Score every pair of ``data`` with the judge at ``model_path``; write ``metrics.json`` and ``scores.jsonl``.

    The data and the checkpoint are read and checked before ``out_dir`` is created: bad input writes nothing.
    """
    from selfplay.core.preference_model import load_preference_model
    from selfplay.data.preference_pairs import read_preference_pairs
    from selfplay.errors import UserError
    from selfplay.io import write_json, write_jsonl
    from selfplay.judges.base import resolve_device
    from selfplay.models import resolve_model

    if fmt not in FORMATS:
        raise UserError(f"unknown --format '{fmt}'; choose one of {', '.join(FORMATS)}")
    pairs = read_preference_pairs(data, split=split, require_subset=fmt == "rewardbench")
    target = resolve_device(device)
    dtype = torch.bfloat16 if target.startswith("cuda") else torch.float32
    model, tokenizer = load_preference_model(resolve_model(model_path), target, dtype)
    scores = pair_scores(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length).float()
    margins = torch.tensor([p["margin"] for p in pairs])
    groups = [json.dumps(p["prompt"], sort_keys=True) for p in pairs]
    tau = model.spec.tau
    metrics: dict[str, Any] = {"model": str(model_path), "data": str(data), "format": fmt,
                               "kind": "gpm" if model.spec.value_head_dim > 1 else "bt", "tau": tau,
                               **summarize(scores, margins, tau, groups)}
    subsets = sorted({p["subset"] for p in pairs if "subset" in p})
    if subsets:
        metrics["subsets"] = {}
        for name in subsets:
            idx = [i for i, p in enumerate(pairs) if p.get("subset") == name]
            metrics["subsets"][name] = summarize(scores[idx], margins[idx], tau, [groups[i] for i in idx])
    if fmt == "rewardbench":
        metrics["rewardbench"] = rewardbench_sections({k: v["accuracy"] for k, v in metrics["subsets"].items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "scores.jsonl", ({"id": p["id"], **({"subset": p["subset"]} if "subset" in p else {}),
                                            "score": s, "correct": s > 0} for p, s in zip(pairs, scores.tolist())))
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def print_preference(metrics: dict[str, Any]) -> None:
    """The metrics as tables on the console."""
    from rich.table import Table

    from selfplay.progress import console

    def row(name: str, m: dict[str, Any]) -> list[str]:
        low, high = m["accuracy_ci95"]
        return [name, str(m["n"]), f"{m['accuracy']:.3f}", f"[{low:.3f}, {high:.3f}]", f"{m['prob']:.3f}",
                f"{m['loss']:.4f}"]

    table = Table(title=f"preference accuracy ({metrics['kind']}, tau {metrics['tau']:g})")
    for column in ("pairs", "n", "accuracy", "95% CI (prompts)", "mean prob", "loss"):
        table.add_column(column)
    table.add_row(*row("all", metrics))
    for name, m in metrics.get("subsets", {}).items():
        table.add_row(*row(name, m))
    console.print(table)
    rb = metrics.get("rewardbench")
    if rb and rb["sections"]:
        sections = Table(title="RewardBench sections (example-count weighted), score = their plain mean")
        for name in (*rb["sections"], "score"):
            sections.add_column(name)
        sections.add_row(*(f"{v:.3f}" for v in rb["sections"].values()), f"{rb['score']:.3f}")
        console.print(sections)
    if rb:
        if rb["missing_sections"]:
            console.print(f"no rows for: {', '.join(rb['missing_sections'])} (left out of the score)")
        if rb["unmapped_subsets"]:
            console.print(f"subsets in no RewardBench section: {', '.join(rb['unmapped_subsets'])}")
