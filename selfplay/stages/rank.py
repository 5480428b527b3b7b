"""The rank stage: judge the K samples of every prompt and write scored records with a win matrix.

Input: a sample-set JSONL ``{id, prompt_messages, reference?, samples: [K texts], sampler}`` (or a
generate directory of shards, merged first). Output, one line per prompt::

    {"id", "prompt_messages", "reference", "samples", "scores"?: [K], "win_matrix": [K][K],
     "win_matrix_kind": "prob" | "skew_score", "judge": spec, "errors": n}

``win_matrix`` is always present: P[i][j] = sigmoid(s_i − s_j) for score judges, the symmetrized
pairwise probabilities for an LLM judge, GPM's raw skew-symmetric score for ``gpm``. Results are
appended per prompt (fsynced), so a rerun skips the prompts already judged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from selfplay.config import Config, save_config
from selfplay.core.preference import symmetrize, win_prob_from_scores
from selfplay.data.schema import RowRef, check_messages
from selfplay.errors import DataError, UserError
from selfplay.io import JsonlAppender, iter_jsonl
from selfplay.judges import Judge, JudgeItem, JudgeResult, make_judge, parse_judge_spec
from selfplay.stages.shards import SHARD_PATTERN, OnFirstUse, ShardJob


def load_sample_sets(path: Path) -> list[dict[str, Any]]:
    """Read and validate a sample-set JSONL; every problem names the file, the line and the field."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(iter_jsonl(path), start=1):
        if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
            raise DataError("missing or invalid 'id' (a string)", path=path, line=line, field="id")
        row_id = str(row["id"])
        if row_id in seen:
            raise DataError(f"duplicate id '{row_id}' (first on line {seen[row_id]})", path=path, line=line, field="id")
        seen[row_id] = line
        check_messages(row.get("prompt_messages"), "prompt_messages", RowRef(str(path), line - 1, line=line))
        samples = row.get("samples")
        if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
            raise DataError("expected a list of sample texts", path=path, line=line, field="samples")
        if len(samples) < 2:
            raise DataError(f"ranking needs at least 2 samples per prompt, got {len(samples)} "
                            "(generate with n >= 2)", path=path, line=line, field="samples")
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataError("expected a string", path=path, line=line, field="reference")
        rows.append({**row, "id": row_id})
    if not rows:
        raise DataError("no sample sets in the file", path=path)
    return rows


def _check_references(rows: list[dict[str, Any]], lines: dict[str, int], path: Path) -> None:
    """For judges that compare with the reference answer (verifiers): every row needs one."""
    for row in rows:
        if not (row.get("reference") or "").strip():
            raise DataError("this judge compares samples with the reference answer, which is missing",
                            path=path, line=lines[row["id"]], field="reference")


def shard_slice(n: int, index: int, count: int) -> slice:
    """The contiguous slice of ``n`` prompts that shard ``index`` of ``count`` ranks (like SPPO's data_frac)."""
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--data-frac must be in 0..{count - 1} for --num-fracs {count}, got {index}")
    size = math.ceil(n / count)
    return slice(index * size, (index + 1) * size)


def _win_matrix(result: JudgeResult, k: int, item_id: str) -> tuple[list[list[float]], str]:
    """The record's win matrix and its kind, from a judge result (checked against K)."""
    if "scores" in result:
        scores = result["scores"]
        if len(scores) != k or not all(math.isfinite(s) for s in scores):
            raise UserError(f"prompt '{item_id}': the judge returned {len(scores)} scores for {k} samples "
                            f"or a non-finite score: {scores}")
        return win_prob_from_scores(scores), "prob"
    matrix = result.get("win_matrix")
    if matrix is None or len(matrix) != k or any(len(row) != k for row in matrix):
        raise UserError(f"prompt '{item_id}': the judge returned no {k}×{k} matrix")
    kind = result.get("win_matrix_kind", "prob")
    return (symmetrize(matrix) if kind == "prob" else [list(map(float, row)) for row in matrix]), kind


def scored_record(item: dict[str, Any], result: JudgeResult, judge_spec: str) -> dict[str, Any]:
    """The output line for one prompt."""
    matrix, kind = _win_matrix(result, len(item["samples"]), item["id"])
    record: dict[str, Any] = {"id": item["id"], "prompt_messages": item["prompt_messages"],
                              "reference": item.get("reference"), "samples": item["samples"]}
    if "scores" in result:
        record["scores"] = [float(s) for s in result["scores"]]
    record.update(win_matrix=matrix, win_matrix_kind=kind, judge=judge_spec, errors=int(result.get("errors", 0)))
    if "meta" in item:
        record["meta"] = item["meta"]
    return record


def _output_paths(out_path: Path, shard: tuple[int, int] | None) -> tuple[Path, Path]:
    """(the JSONL to append to, where the resolved config goes)."""
    if shard is not None:
        index, count = shard
        return out_path / f"shard-{index:05d}-of-{count:05d}.jsonl", out_path / "config.yaml"
    if out_path.is_dir():
        return out_path / "rank.jsonl", out_path / "config.yaml"
    return out_path, out_path.with_name(out_path.name.removesuffix(".jsonl") + ".config.yaml")


def _done_ids(dest: Path, judge_spec: str) -> set[str]:
    """Ids already judged in ``dest`` (a torn last line from a kill is ignored); refuses another judge's file."""
    if not dest.exists():
        return set()
    done = set()
    for line, row in enumerate(iter_jsonl(dest, tolerate_torn_tail=True), start=1):
        if row.get("judge") != judge_spec:
            raise DataError(f"holds results of judge '{row.get('judge')}', not '{judge_spec}'; "
                            "write to another --out or delete the file", path=dest, line=line, field="judge")
        done.add(str(row["id"]))
    return done


def run_rank(cfg: Config, samples_path: Path, out_path: Path, *, judge: Judge | None = None,
             shard: tuple[int, int] | None = None) -> Path:
    """Judge every prompt of ``samples_path`` with ``cfg.rank.judge`` (or ``judge``) into ``out_path``.

    ``shard=(index, count)`` ranks only that contiguous slice of prompts and writes
    ``out_path/shard-0000i-of-0000n.jsonl``. Returns the JSONL written; rerunning resumes it.
    """
    from selfplay.progress import console, progress_bar

    samples_path, out_path = Path(samples_path), Path(out_path)
    if samples_path.is_dir():
        from selfplay.stages.shards import merge_shards

        samples_path = merge_shards(samples_path)
    judge_spec = cfg.rank.judge
    if judge is None:
        parse_judge_spec(judge_spec)  # an unknown judge is refused before the output exists
    all_rows = load_sample_sets(samples_path)
    rows = all_rows[shard_slice(len(all_rows), *shard)] if shard is not None else all_rows
    dest, config_path = _output_paths(out_path, shard)
    save_config(cfg, config_path)
    done = _done_ids(dest, judge_spec)
    todo = [row for row in rows if row["id"] not in done]
    if todo:  # a finished file is not worth loading a judge model for
        judge = judge or make_judge(judge_spec, batch_size=cfg.rank.batch_size, device=cfg.rank.device)
        if getattr(judge, "needs_reference", False):
            _check_references(todo, {row["id"]: n for n, row in enumerate(all_rows, start=1)}, samples_path)
    chunk = max(1, cfg.rank.batch_size)
    errors = 0
    with JsonlAppender(dest) as out, progress_bar("rank", total=len(rows), completed=len(rows) - len(todo)) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            items: list[JudgeItem] = [
                {"id": r["id"], "prompt_messages": r["prompt_messages"], "samples": r["samples"],
                 "reference": r.get("reference"), "meta": r.get("meta", {})} for r in batch]
            results = judge.score(items)
            if len(results) != len(items):
                raise UserError(f"judge '{judge_spec}' returned {len(results)} results for {len(items)} prompts")
            for row, result in zip(batch, results):
                record = scored_record(row, result, judge_spec)
                errors += record["errors"]
                out.write(record)
                bar.advance()
    skipped = len(rows) - len(todo)
    console.print(f"ranked {len(todo)} prompts with {judge_spec}" + (f" ({skipped} already done)" if skipped else "")
                  + (f", {errors} malformed judge replies counted as ties" if errors else "") + f" → {dest}",
                  soft_wrap=True)
    return dest


def rank_shards(cfg: Config, job: ShardJob, shards: list[int], num_shards: int) -> None:
    """Rank shards ``shards`` of ``num_shards`` of ``job`` (sample sets ``job.data`` into the shard directory
    ``job.out``) in this process, with one judge for all."""
    judge = OnFirstUse(lambda: make_judge(cfg.rank.judge, batch_size=cfg.rank.batch_size, device=cfg.rank.device))
    for k in shards:
        run_rank(cfg, job.data, job.out, judge=judge, shard=(k, num_shards))


def rank_shard_count(shard_dir: Path) -> int | None:
    """The shard count an existing rank shard directory was started with (None when there is none)."""
    counts = {int(m.group(2)) for p in Path(shard_dir).glob("shard-*.jsonl") if (m := SHARD_PATTERN.match(p.name))}
    if len(counts) > 1:
        raise UserError(f"{shard_dir} mixes shards of {sorted(counts)} shards; delete it and rerun")
    return counts.pop() if counts else None


def _read_rank_shards(shard_dir: Path, samples_path: Path, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Scored records in the order of ``samples_path`` and what is missing; DataError for foreign or doubled ids."""
    ids = [str(row["id"]) for row in iter_jsonl(samples_path)]
    rows: dict[str, dict[str, Any]] = {}
    problems = []
    for k in range(count):
        path = Path(shard_dir) / f"shard-{k:05d}-of-{count:05d}.jsonl"
        expected = set(ids[shard_slice(len(ids), k, count)])
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        for line, row in enumerate(iter_jsonl(path, tolerate_torn_tail=True), start=1):
            row_id = str(row.get("id"))
            if row_id not in expected or row_id in rows:
                why = "does not belong to this shard" if row_id not in expected else "is duplicated"
                raise DataError(f"id {row_id!r} {why}", path=path, line=line, field="id")
            rows[row_id] = row
        if (have := len(expected & rows.keys())) < len(expected):
            problems.append(f"{path.name} has {have} of {len(expected)} prompts")
    return [rows[i] for i in ids if i in rows], problems


def unfinished_rank_shards(shard_dir: Path, samples_path: Path, count: int) -> list[str]:
    """What keeps the rank shards from merging; [] when every prompt is judged exactly once."""
    return _read_rank_shards(shard_dir, samples_path, count)[1]


def merge_rank_shards(shard_dir: Path, samples_path: Path, count: int, dest: Path) -> Path:
    """Join the ``count`` rank shards of ``shard_dir`` into ``dest`` in the order of ``samples_path``."""
    rows, problems = _read_rank_shards(shard_dir, samples_path, count)
    if problems:
        raise UserError(f"cannot merge {shard_dir}: " + "; ".join(problems))
    from selfplay.io import write_jsonl

    write_jsonl(dest, rows)
    return dest

