"""Preference pairs, for training and evaluating judges (GPM, Bradley-Terry), from the shapes people keep them in.

:func:`read_preference_pairs` reads any source :func:`selfplay.data.sources.read_rows` reads and returns
canonical pairs ``{"id", "prompt": [messages], "chosen": str, "rejected": str, "margin": float, "subset"?}``.
Each row is recognised by its fields:

* **pair records** ``{id?, prompt, chosen, rejected, margin?, subset?}`` with answer strings: ours (``selfplay
  train`` records), RewardBench's rows (``prompt`` a string), TRL's preference format (answer-only message lists);
* **conversations** ``{chosen: [messages], rejected: [messages]}``: UltraFeedback-binarized and
  Skywork-Reward-Preference; each side is the whole conversation, its last message the assistant's answer and
  the turns before it the prompt, which both sides must share;
* **ranked samples** ``{id, prompt_messages, samples, scores | win_matrix}`` (``selfplay rank``): every pair
  (i, j) the judge strictly prefers, K(K-1)/2 at most; pairs of identical texts are left out.

A problem in a row stops the read with the file, the line (JSONL) or row, and the field.
"""

from __future__ import annotations

from typing import Any

from selfplay.data.schema import RowRef, check_messages
from selfplay.data.sources import read_rows
from selfplay.errors import DataError

# Preferences closer than this count as ties (a verifier's 0/1 are exact; model scores rarely tie).
TIE_TOLERANCE = 1e-9


def _answer(value: Any, ref: RowRef, field: str) -> str:
    """An answer: a non-empty string, or a message list whose last message is the assistant's answer."""
    if isinstance(value, list):
        messages = check_messages(value, field, ref)
        if messages[-1]["role"] != "assistant":
            raise ref.error("the last message must be the assistant's answer", field)
        value = messages[-1]["content"]
    if not isinstance(value, str):
        raise ref.error(f"expected an answer string or a message list, got {type(value).__name__}", field)
    if not value.strip():
        raise ref.error("the answer is empty", field)
    return value


def _prompt(row: dict[str, Any], ref: RowRef) -> list[dict[str, str]]:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ref.error("the prompt is empty", "prompt")
        return [{"role": "user", "content": prompt}]
    messages = check_messages(prompt, "prompt", ref)
    if not any(m["content"].strip() for m in messages):
        raise ref.error("the prompt is empty", "prompt")
    return messages


def _conversation_prompt(row: dict[str, Any], ref: RowRef) -> list[dict[str, str]]:
    """The turns before the answer, shared by both sides of a conversation pair."""
    prompts = []
    for field in ("chosen", "rejected"):
        messages = check_messages(row[field], field, ref)
        if len(messages) < 2:
            raise ref.error("a conversation needs the prompt turns before the answer (or a separate 'prompt')",
                            field)
        prompts.append(messages[:-1])
    if prompts[0] != prompts[1]:
        raise ref.error("the prompt turns differ from those of 'chosen': a pair compares two answers to one "
                        "prompt", "rejected")
    return prompts[0]


def _margin(row: dict[str, Any], ref: RowRef) -> float:
    value = row.get("margin")
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ref.error(f"expected a number, got {value!r}", "margin")
    return float(value)


def _pair(row: dict[str, Any], ref: RowRef, require_subset: bool) -> dict[str, Any]:
    for field in ("chosen", "rejected"):
        if field not in row:
            raise ref.error("missing required field", field)
    if "prompt" in row:
        prompt = _prompt(row, ref)
    elif isinstance(row["chosen"], list):
        prompt = _conversation_prompt(row, ref)
    else:
        raise ref.error("missing required field (or give chosen/rejected as whole conversations)", "prompt")
    chosen, rejected = _answer(row["chosen"], ref, "chosen"), _answer(row["rejected"], ref, "rejected")
    if chosen.strip() == rejected.strip():
        raise ref.error("'chosen' and 'rejected' are the same answer: there is no preference to learn", "rejected")
    pair = {"id": str(row.get("id", row.get("prompt_id", f"pair-{ref.index}"))), "prompt": prompt,
            "chosen": chosen, "rejected": rejected, "margin": _margin(row, ref)}
    subset = row.get("subset")
    if subset is not None or require_subset:
        if not isinstance(subset, str) or not subset.strip():
            raise ref.error("missing required field (RewardBench rows name their subset)" if subset is None
                            else f"expected a subset name, got {subset!r}", "subset")
        pair["subset"] = subset
    return pair


def preference(row: dict[str, Any], i: int, j: int) -> float:
    """How much a ranked record's judge prefers sample i to sample j (> 0: i is preferred).

    Scores: s_i - s_j. A raw skew-symmetric matrix (GPM): S[i][j] - S[j][i]. A win-probability matrix:
    M[i][j] - M[j][i], i.e. twice the symmetrised P(i beats j) - 1/2.
    """
    if row.get("scores") is not None:
        return float(row["scores"][i]) - float(row["scores"][j])
    matrix = row["win_matrix"]
    return float(matrix[i][j]) - float(matrix[j][i])


def pairs_from_ranked(row: dict[str, Any], ref: RowRef | None = None) -> tuple[list[dict[str, Any]], int]:
    """All pairs of a ranked record with a strict preference, winner first; and the count of pairs left out
    because both samples are the same text."""
    ref = ref or RowRef("<ranked records>", 0)
    samples = row.get("samples")
    if not isinstance(samples, list) or len(samples) < 2 or not all(isinstance(s, str) for s in samples):
        raise ref.error("expected a list of at least 2 sample texts", "samples")
    if row.get("scores") is None and row.get("win_matrix") is None:
        raise ref.error("a ranked record needs 'scores' or 'win_matrix' (the output of `selfplay rank`)", "scores")
    prompt = check_messages(row.get("prompt_messages"), "prompt_messages", ref)
    pairs, same = [], 0
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            d = preference(row, i, j)
            if abs(d) <= TIE_TOLERANCE or not samples[i].strip() or not samples[j].strip():
                continue
            if samples[i].strip() == samples[j].strip():
                same += 1
                continue
            w, l = (i, j) if d > 0 else (j, i)
            pairs.append({"id": f"{row.get('id', ref.index)}:{w}>{l}", "prompt": prompt, "chosen": samples[w],
                          "rejected": samples[l], "margin": 0.0})
    return pairs, same


def read_preference_pairs(source: str, *, split: str = "train", require_subset: bool = False) -> list[dict[str, Any]]:
    """Canonical pairs from ``source`` (file, directory, hub id); ``require_subset``: every row names its
    RewardBench subset. Given ids must be unique; missing ones are made from ``prompt_id`` or the row's position."""
    pairs: list[dict[str, Any]] = []
    seen: dict[str, RowRef] = {}
    for ref, row in read_rows(str(source), split):
        if isinstance(row, DataError):
            raise row
        if "samples" in row and "chosen" not in row:
            found = pairs_from_ranked(row, ref)[0]
        else:
            found = [_pair(row, ref, require_subset)]
        for pair in found:
            if pair["id"] in seen:
                if "id" in row:  # an id the data gives must be unique; a made-up one (prompt_id) is made so
                    raise ref.error(f"duplicate id '{pair['id']}'", "id")
                pair["id"] = f"{pair['id']}-{ref.index}"
            seen[pair["id"]] = ref
            pairs.append(pair)
    if not pairs:
        raise DataError("no preference pairs (every ranked record judged its samples equal)", path=source)
    return pairs
