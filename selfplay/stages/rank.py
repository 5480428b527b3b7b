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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfplay.config import Config, save_config
from selfplay.core.preference import symmetrize, win_prob_from_scores
from selfplay.data.schema import RowRef, check_messages
from selfplay.errors import DataError, UserError
from selfplay.io import JsonlAppender, iter_jsonl, iter_jsonl_offsets, read_jsonl_at
from selfplay.judges import Judge, JudgeItem, JudgeResult, checks_reference, make_judge, parse_judge_spec
from selfplay.stages.shards import SHARD_PATTERN, OnFirstUse, ShardJob, merge_shards


def check_sample_sets(path: Path, *, need_reference: bool = False) -> list[str]:
    """Validate a sample-set JSONL in one streamed pass; returns its ids in file order. Every problem names
    the file, the line and the field. ``need_reference``: the judge compares samples with each row's
    reference answer (a verifier), so a missing one is refused here, before anything is judged."""
    ids: list[str] = []
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
        if need_reference and not (reference or "").strip():
            raise DataError("this judge compares samples with the reference answer, which is missing",
                            path=path, line=line, field="reference")
        ids.append(row_id)
    if not ids:
        raise DataError("no sample sets in the file", path=path)
    return ids


def _chunks_to_judge(path: Path, keep: slice, done: set[str], size: int) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``path`` in positions ``keep`` not in ``done``, ``size`` at a time, read as they are judged."""
    chunk: list[dict[str, Any]] = []
    for index, row in enumerate(iter_jsonl(path)):
        if index >= keep.stop:
            break
        row = {**row, "id": str(row["id"])}
        if index >= keep.start and row["id"] not in done:
            chunk.append(row)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


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


def check_usable(item_id: str, result: JudgeResult, k: int, min_usable: float, judge_spec: str, dest: Path,
                 written: int) -> None:
    """Stop (UserError) when the judge compared too few of a prompt's sample pairs usably: a judge whose
    replies carry no verdict would otherwise write P = ½ everywhere and the methods train on noise."""
    if "pairs_usable" not in result:
        return  # a judge whose comparisons cannot fail (scores, GPM)
    pairs, usable = k * (k - 1) // 2, result["pairs_usable"]
    if usable > 0 and usable >= min_usable * pairs:
        return
    got = f"none of its {pairs} sample pairs" if usable == 0 else \
        f"{usable} of its {pairs} sample pairs (below remote.min_usable={min_usable:g})"
    kept = f"the {written} prompts judged before it are kept in {dest} and a rerun resumes after them" if written \
        else "nothing was written"
    raise UserError(f"prompt '{item_id}': judge {judge_spec} gave a verdict in both orders for {got}: "
                    f"{result.get('errors', 0)} replies without [[A]]/[[B]]/[[C]], e.g. {result.get('sample_error', '')!r}. "
                    f"Stopping instead of writing ties; {kept}.")


def run_rank(cfg: Config, samples_path: Path, out_path: Path, *, judge: Judge | None = None,
             shard: tuple[int, int] | None = None) -> Path:
    """Judge every prompt of ``samples_path`` with ``cfg.rank.judge`` (or ``judge``) into ``out_path``.

    ``shard=(index, count)`` ranks only that contiguous slice of prompts and writes
    ``out_path/shard-0000i-of-0000n.jsonl``. Returns the JSONL written; rerunning resumes it.
    """
    from selfplay.progress import console, progress_bar

    samples_path, out_path = Path(samples_path), Path(out_path)
    if samples_path.is_dir():

        samples_path = merge_shards(samples_path)
    judge_spec = cfg.rank.judge
    if judge is None:
        parse_judge_spec(judge_spec)  # an unknown judge is refused before the output exists
    # Two streamed passes (check everything, then judge chunk by chunk): memory holds ids, not sample sets.
    ids = check_sample_sets(samples_path, need_reference=checks_reference(judge_spec))
    keep = shard_slice(len(ids), *shard) if shard is not None else slice(0, len(ids))
    total = len(ids[keep])
    dest, config_path = _output_paths(out_path, shard)
    save_config(cfg, config_path)
    done = _done_ids(dest, judge_spec) & set(ids[keep])
    if len(done) < total:  # a finished file is not worth loading a judge model for
        judge = judge or make_judge(judge_spec, batch_size=cfg.rank.batch_size, device=cfg.rank.device,
                                    remote=cfg.remote)
    errors = written = 0
    # lazy: a judge that fails on the first prompts leaves no empty output behind
    with JsonlAppender(dest, lazy=True) as out, progress_bar("rank", total=total, completed=len(done)) as bar:
        for batch in _chunks_to_judge(samples_path, keep, done, max(1, cfg.rank.batch_size)):
            items: list[JudgeItem] = [
                {"id": r["id"], "prompt_messages": r["prompt_messages"], "samples": r["samples"],
                 "reference": r.get("reference"), "meta": r.get("meta", {})} for r in batch]
            results = judge.score(items)
            if len(results) != len(items):
                raise UserError(f"judge '{judge_spec}' returned {len(results)} results for {len(items)} prompts")
            for row, result in zip(batch, results):
                check_usable(row["id"], result, len(row["samples"]), cfg.remote.min_usable, judge_spec, dest,
                             len(done) + written)
                record = scored_record(row, result, judge_spec)
                errors += record["errors"]
                out.write(record)
                written += 1
                bar.advance()
    skipped = len(done)
    console.print(f"ranked {written} prompts with {judge_spec}" + (f" ({skipped} already done)" if skipped else "")
                  + (f", {errors} judge replies without a verdict counted as ties" if errors else "") + f" → {dest}",
                  soft_wrap=True)
    return dest


def rank_shards(cfg: Config, job: ShardJob, shards: list[int], num_shards: int) -> None:
    """Rank shards ``shards`` of ``num_shards`` of ``job`` (sample sets ``job.data`` into the shard directory
    ``job.out``) in this process, with one judge for all."""
    judge = OnFirstUse(lambda: make_judge(cfg.rank.judge, batch_size=cfg.rank.batch_size, device=cfg.rank.device,
                                          remote=cfg.remote))
    for k in shards:
        run_rank(cfg, job.data, job.out, judge=judge, shard=(k, num_shards))


def rank_shard_count(shard_dir: Path) -> int | None:
    """The shard count an existing rank shard directory was started with (None when there is none)."""
    counts = {int(m.group(2)) for p in Path(shard_dir).glob("shard-*.jsonl") if (m := SHARD_PATTERN.match(p.name))}
    if len(counts) > 1:
        raise UserError(f"{shard_dir} mixes shards of {sorted(counts)} shards; delete it and rerun")
    return counts.pop() if counts else None


def _read_rank_shards(shard_dir: Path, samples_path: Path,
                      count: int) -> tuple[list[tuple[Path, int]], list[str]]:
    """Where the scored records are (shard file, byte offset), in the order of ``samples_path``, and what is
    missing; DataError for foreign or doubled ids. Offsets rather than records, so merging holds no sample sets."""
    ids = [str(row["id"]) for row in iter_jsonl(samples_path)]
    rows: dict[str, tuple[Path, int]] = {}
    problems = []
    for k in range(count):
        path = Path(shard_dir) / f"shard-{k:05d}-of-{count:05d}.jsonl"
        expected = set(ids[shard_slice(len(ids), k, count)])
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        for line, offset, row in iter_jsonl_offsets(path, tolerate_torn_tail=True):
            row_id = str(row.get("id"))
            if row_id not in expected or row_id in rows:
                why = "does not belong to this shard" if row_id not in expected else "is duplicated"
                raise DataError(f"id {row_id!r} {why}", path=path, line=line, field="id")
            rows[row_id] = (path, offset)
        if (have := len(expected & rows.keys())) < len(expected):
            problems.append(f"{path.name} has {have} of {len(expected)} prompts")
    return [rows[i] for i in ids if i in rows], problems


def unfinished_rank_shards(shard_dir: Path, samples_path: Path, count: int) -> list[str]:
    """What keeps the rank shards from merging; [] when every prompt is judged exactly once."""
    return _read_rank_shards(shard_dir, samples_path, count)[1]


def merge_rank_shards(shard_dir: Path, samples_path: Path, count: int, dest: Path) -> Path:
    """Join the ``count`` rank shards of ``shard_dir`` into ``dest`` in the order of ``samples_path``."""
    where, problems = _read_rank_shards(shard_dir, samples_path, count)
    if problems:
        raise UserError(f"cannot merge {shard_dir}: " + "; ".join(problems))
    from selfplay.io import write_jsonl

    write_jsonl(dest, read_jsonl_at(where))
    return dest

