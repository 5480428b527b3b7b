"""Reading a run directory for the report: its config, iterations, a seeded sample of records, held-out data.

Large runs hold tens of thousands of prompts per iteration; the report shows a bounded sample of them,
chosen by a seeded hash of each record's id (the smallest ``max_prompts`` hashes). The same prompt ids are
therefore picked in every iteration and in every file that has them, so a prompt can be followed from the
samples of iteration 0 to the answers of the last evaluation. Files are streamed, never held whole.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _lines(path: Path) -> Iterator[Record]:
    """Records of a JSONL file; a torn or malformed line (a run in progress) is skipped, not fatal."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


def _key(seed: int, rid: str) -> str:
    return hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()


# Our writers put the id first: read it without parsing the whole line (samples can be kilobytes each).
_ID_FIRST = re.compile(r'^\{"id":\s*"((?:[^"\\]|\\.)*)"')


def _line_id(line: str, i: int) -> str | None:
    """The record id of a JSONL line (its line number when it has none); None for a line that is no record."""
    m = _ID_FIRST.match(line)
    if m and "\\" not in m.group(1):
        return m.group(1)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return str(obj.get("id", i)) if isinstance(obj, dict) else None


def sample_records(path: Path, max_prompts: int, seed: int = 0) -> tuple[list[Record], int]:
    """(up to ``max_prompts`` records chosen by seeded id hash, in file order; number of records in the file).

    Only the chosen lines are parsed; the others are read for their id.
    """
    heap: list[tuple[str, int, str]] = []  # (inverted hash, line number, line): a min-heap keeping the k smallest
    total = 0
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            rid = _line_id(line, i)
            if rid is None:
                continue  # torn or malformed (a run in progress)
            total += 1
            item = (_neg(_key(seed, rid)), i, line)
            if len(heap) < max_prompts:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    chosen = []
    for _, _, line in sorted(heap, key=lambda t: t[1]):
        try:
            chosen.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line whose id was readable
            total -= 1
    return [r for r in chosen if isinstance(r, dict)], total


def _neg(hexdigest: str) -> str:
    """A string that sorts in the opposite order of ``hexdigest`` (so heapq's min-heap keeps the smallest)."""
    return hexdigest.translate(str.maketrans("0123456789abcdef", "fedcba9876543210"))


def records_for(path: Path, ids: set[str]) -> dict[str, list[Record]]:
    """Records of ``path`` whose id is one of ``ids`` or starts with one of them followed by ``#`` (training
    records built from a collected record: ``<id>#s0@it1``), grouped by that id."""
    out: dict[str, list[Record]] = {}
    if not ids or not Path(path).is_file():
        return out
    for rec in _lines(path):
        rid = str(rec.get("id", ""))
        base = rid if rid in ids else rid.split("#", 1)[0]
        if base in ids:
            out.setdefault(base, []).append(rec)
    return out


def load_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = Path(run_dir) / "config.yaml"
    try:
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}


def held_out_records(run_dir: Path, ids: set[str]) -> dict[str, Record]:
    """The prepared SFT records with these ids (the held-out prompts the evaluations answered)."""
    found: dict[str, Record] = {}
    from selfplay.runs import prepared_data_dir

    d = prepared_data_dir(run_dir)
    if d is None or not ids:
        return found
    for name in ("test.jsonl", "train.jsonl"):  # held-out prompts are the test split, else the tail of train
        if (d / name).is_file() and len(found) < len(ids):
            with (d / name).open(encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if line.strip() and _line_id(line, i) in ids:
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        found[str(rec["id"])] = rec
    return found


def iteration_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(k, run_dir/iter_k) in numeric order."""
    out = []
    for p in Path(run_dir).glob("iter_*"):
        m = re.fullmatch(r"iter_(\d+)", p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def train_curves(run_dir: Path, key: str = "loss") -> dict[int, list[tuple[int, float]]]:
    """{k: [(step, value)]} from each iteration's train/metrics.jsonl."""
    out = {}
    for k, d in iteration_dirs(run_dir):
        path = d / "train" / "metrics.jsonl"
        if path.is_file():
            points = [(int(m.get("step", i + 1)), float(m[key])) for i, m in enumerate(_lines(path))
                      if isinstance(m.get(key), (int, float))]
            if points:
                out[k] = points
    return out
