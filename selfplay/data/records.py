"""Prepared data directories: build them from any source (:func:`prepare_source`) and load them
(:func:`load_sft`).

A prepared directory holds ``train.jsonl`` (+ ``test.jsonl`` when a test split was made) of canonical
SFT records and ``metadata.json`` with the source, format, counts per split, dropped rows by reason
and the resolved options. It is written into a temporary directory and renamed into place, so a
failed run never leaves half an output behind.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import random
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from rich.console import Console
from rich.progress import Progress, TextColumn

from selfplay.data import synth_arith
from selfplay.data.formats import TURN_CHOICES, ConvertOptions, detect_format, get_format
from selfplay.data.schema import validate_sft_record
from selfplay.data.sources import RawRow, iter_jsonl_rows, iter_rows
from selfplay.errors import DataError, UserError, suggest
from selfplay.io import JsonlWriter, read_json, write_json, write_jsonl

Record = dict[str, Any]

SYNTH_PREFIX = "synth:"
# synth:NAME -> the generator; arith-calc: the same problems with a scripted calculator agent's trajectories.
SYNTH_TASKS = {"arith": synth_arith.make_problems,
               "arith-calc": functools.partial(synth_arith.make_problems, react=True)}
SYNTH_PARAMS = ("num", "seed", "min_steps", "max_steps", "max_value")
SYNTH_DEFAULT_NUM = 1000
# The options of prepare_source that shape its output (saved in metadata.json).
DEFAULT_OPTIONS: dict[str, Any] = {"format": "auto", "split": "train", "num": None, "seed": 0,
                                   "test_size": None, "turns": None, "skip_invalid": False}


@dataclass
class Converted:
    """Records grouped by source row (``--turns all`` makes several per row) and what was dropped."""

    groups: list[list[Record]]
    format: str
    source_rows: int
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass
class _Tally:
    """What a streamed conversion saw: the format, rows read, rows dropped by reason."""

    format: str = ""
    source_rows: int = 0
    groups: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    first_ref: Any = None


def _drop_reason(error: DataError) -> str:
    # Indices are folded ("messages[3].role" -> "messages[].role") so reasons aggregate into counts.
    where = re.sub(r"\[\d+\]", "[]", error.field) if error.field else None
    return f"{where}: {error.reason}" if where else error.reason


def _check_turns(turns: str | None) -> None:
    if turns is not None and turns not in TURN_CHOICES:
        raise UserError(f"--turns must be one of {', '.join(TURN_CHOICES)}, got '{turns}'."
                        f"{suggest(turns, TURN_CHOICES)}")


def convert_rows(rows: list[RawRow], fmt_name: str = "auto", turns: str | None = None,
                 skip_invalid: bool = False, stem: str = "row", show_progress: bool = True) -> Converted:
    """Normalize raw rows into canonical SFT records; with ``skip_invalid`` bad rows are counted, not raised."""
    tally = _Tally()
    groups = list(iter_groups(rows, fmt_name, turns, skip_invalid, stem, show_progress, tally))
    return Converted(groups=groups, format=tally.format, source_rows=tally.source_rows, dropped=tally.dropped)


def iter_groups(rows: Iterable[RawRow], fmt_name: str, turns: str | None, skip_invalid: bool, stem: str,
                show_progress: bool, tally: _Tally) -> Iterator[list[Record]]:
    """:func:`convert_rows` one row at a time: the record groups of each valid row, in order; ``tally``
    collects the format and the counts. Holds the ids seen (duplicates are errors), never the records."""
    _check_turns(turns)
    rows = iter(rows)
    pending: list[RawRow] = []
    if fmt_name == "auto":  # detect from the first row that parses (rows before it are kept for conversion)
        for ref, row in rows:
            pending.append((ref, row))
            if isinstance(row, dict):
                fmt = detect_format(row, ref)
                break
        else:
            if not pending:
                return
            raise pending[0][1]  # type: ignore[misc]  # every row failed to parse: report the first failure
    else:
        fmt = get_format(fmt_name)
    tally.format = fmt.name
    options = ConvertOptions(turns=turns or fmt.default_turns, stem=stem)
    seen_ids: set[str] = set()
    console = Console(stderr=True)
    # Off when stderr is not a terminal: there rich would only leave blank lines in logs.
    with Progress(TextColumn(f"Reading {fmt.name} rows"), TextColumn("{task.completed:,}"), console=console,
                  transient=True, disable=not (show_progress and console.is_terminal)) as progress:
        task = progress.add_task("rows", total=None)
        for ref, row in itertools.chain(pending, rows):
            tally.source_rows += 1
            tally.first_ref = tally.first_ref or ref
            progress.advance(task)
            try:
                if isinstance(row, DataError):
                    raise row
                group = fmt.convert(row, ref, options)
                ids = [record["id"] for record in group]
                clash = next((i for i in ids if i in seen_ids or ids.count(i) > 1), None)
                if clash is not None:
                    raise ref.error(f"duplicate id '{clash}'", "id")
                seen_ids.update(ids)
            except DataError as e:
                if not skip_invalid:
                    raise
                tally.dropped[_drop_reason(e)] += 1
                continue
            tally.groups += 1
            yield group
    if not tally.groups and tally.source_rows:
        raise DataError(f"no valid rows (dropped {sum(tally.dropped.values())}: "
                        f"{dict(tally.dropped)})", path=tally.first_ref.path)


def parse_test_size(value: str | int | float | None, total: int) -> int:
    """``--test-size``: a row count (``50``) or a fraction (``0.1``) of ``total`` -> a row count."""
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise UserError(f"--test-size must be a row count or a fraction, got '{value}'") from None
    if isinstance(value, float):
        if not 0.0 < value < 1.0:
            raise UserError(f"--test-size as a fraction must be between 0 and 1, got {value}")
        count = max(1, round(value * total))
    else:
        count = int(value)
    if count < 0:
        raise UserError(f"--test-size must not be negative, got {value}")
    if count >= total:
        raise UserError(f"--test-size {value} leaves no training rows: the data has {total} usable rows")
    return count


def split_indices(count: int, num: int | None, test_size: str | int | float | None,
                  seed: int) -> tuple[set[int], set[int]]:
    """(train, test) source-row indices: ``num`` of the ``count`` rows at random by ``seed``, ``test_size`` of
    them held out. Splitting by source row keeps all turns of one conversation on the same side."""
    if num is not None and num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    order = list(range(count))
    if num is not None or test_size not in (None, "", 0, "0"):
        random.Random(seed).shuffle(order)
    order = order[:num] if num is not None else order
    test_count = parse_test_size(test_size, len(order))
    return set(order[test_count:]), set(order[:test_count])


def _source_fingerprint(source: str) -> dict[str, int] | None:
    """Size and mtime of a local file source, so a changed input invalidates a reused prepared dir."""
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _synth_records(source: str, fmt_name: str, num: int | None, seed: int) -> tuple[str, list[Record]]:
    """(task, records) of a pseudo-source ``synth:<task>?num=N&seed=S&...`` (query values win over options)."""
    task, _, query = source[len(SYNTH_PREFIX):].partition("?")
    if task not in SYNTH_TASKS:
        raise UserError(f"unknown synthetic task '{task}'; available: {', '.join(SYNTH_TASKS)}."
                        f"{suggest(task, SYNTH_TASKS)}")
    if fmt_name not in ("auto", task):
        raise UserError(f"--format {fmt_name} does not apply to the synthetic source '{source}'")
    params: dict[str, int] = {"num": num if num is not None else SYNTH_DEFAULT_NUM, "seed": seed}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in SYNTH_PARAMS:
            raise UserError(f"unknown parameter '{key}' in '{source}'; expected {', '.join(SYNTH_PARAMS)}."
                            f"{suggest(key, SYNTH_PARAMS)}")
        try:
            params[key] = int(values[-1])
        except ValueError:
            raise UserError(f"parameter '{key}' in '{source}' must be an integer, "
                            f"got '{values[-1]}'") from None
    return task, SYNTH_TASKS[task](**params)


def is_prepared_dir(path: str | Path) -> bool:
    """True for a directory written by :func:`prepare_source` (metadata.json + train.jsonl)."""
    path = Path(path)
    return (path / "metadata.json").is_file() and (path / "train.jsonl").is_file()


def _must_replace(out_dir: Path, overwrite: bool) -> bool:
    """Whether ``out_dir`` holds an earlier output to replace; only an empty or prepared dir may be."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return False
    if not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite to replace it")
    if not is_prepared_dir(out_dir):
        raise UserError(f"{out_dir} is not a prepared data directory; refusing to replace it")
    return True


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if _must_replace(out_dir, overwrite):
        trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        out_dir.rename(trash / "old")
        try:
            tmp.rename(out_dir)
        except BaseException:
            (trash / "old").rename(out_dir)  # put the previous output back
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)


def write_prepared_dir(out_dir: str | Path, splits: dict[str, list[Record]], metadata: dict[str, Any],
                       overwrite: bool = False) -> Path:
    """Write ``<split>.jsonl`` files and ``metadata.json`` into ``out_dir`` atomically."""
    with _prepared_dir(Path(out_dir).expanduser(), overwrite) as tmp:
        for name, records in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", records)
        write_json(tmp / "metadata.json", metadata)
    return Path(out_dir).expanduser()


@contextmanager
def _prepared_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary directory beside ``out_dir`` to fill, moved into place when the block succeeds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stick to the renamed output; mkdir honours the umask.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _move_into_place(tmp, out_dir, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_splits(tmp: Path, groups: Iterable[list[Record]], num: int | None,
                  test_size: str | int | float | None, seed: int) -> dict[str, int]:
    """Stream the record groups into ``tmp/train.jsonl`` (and ``test.jsonl``); returns records per split.

    Choosing ``num`` rows or a test split at random needs the row count first: the groups are spooled to a
    file in ``tmp`` (one record per line, its group's index in front) and read back once, so memory holds
    the chosen indices, not the records.
    """
    if num is None and test_size in (None, "", 0, "0"):
        with JsonlWriter(tmp / "train.jsonl") as out:
            for group in groups:
                for record in group:
                    out.write(record)
        return {"train": out.count}
    spool = tmp / ".rows.spool"
    count = 0
    with JsonlWriter(spool, name=tmp / "train.jsonl") as out:
        for count, group in enumerate(groups, start=1):
            for record in group:
                out.write_line(f"{count - 1}\t{json.dumps(record, ensure_ascii=False)}")
    train, test = split_indices(count, num, test_size, seed)
    writers = {"train": JsonlWriter(tmp / "train.jsonl")}
    if test:
        writers["test"] = JsonlWriter(tmp / "test.jsonl")
    with contextlib.ExitStack() as stack, spool.open(encoding="utf-8") as f:
        for writer in writers.values():
            stack.enter_context(writer)
        for line in f:
            index, _, record = line.rstrip("\n").partition("\t")
            side = "test" if int(index) in test else "train" if int(index) in train else None
            if side is not None:
                writers[side].write_line(record)
    spool.unlink()
    return {name: writer.count for name, writer in writers.items()}


def prepare_source(source: str, out_dir: str | Path, *, format: str = "auto", split: str = "train",
                   num: int | None = None, seed: int = 0, test_size: str | int | float | None = None,
                   turns: str | None = None, skip_invalid: bool = False, overwrite: bool = False,
                   show_progress: bool = True) -> Path:
    """Read ``source``, normalize it to canonical SFT records and write a prepared directory.

    ``source``: a .jsonl/.json/.parquet/.csv file, a ``save_to_disk`` directory, a hub id, or
    ``synth:arith[?num=N&seed=S&min_steps=..&max_steps=..&max_value=..]``. ``format``: ``auto`` or a
    name from :data:`selfplay.data.formats.FORMATS`. ``num``: source rows to use (a random subset by
    ``seed``). ``test_size``: rows (int) or fraction held out into ``test.jsonl``. ``turns``:
    first|last|all assistant turns of conversations. Returns ``out_dir``.
    """
    options = {"format": format, "split": split, "num": num, "seed": seed, "test_size": test_size,
               "turns": turns, "skip_invalid": skip_invalid}
    _check_turns(turns)
    if num is not None and num < 1:
        raise UserError(f"--num must be at least 1, got {num}")
    parse_test_size(test_size, 2**62)  # a negative count or a fraction outside (0, 1): refused before reading
    out_dir = Path(out_dir).expanduser()
    _must_replace(out_dir, overwrite)  # fail before reading a large source
    tally = _Tally()
    if source.startswith(SYNTH_PREFIX):
        task, records = _synth_records(source, format, num, seed)
        groups: Iterable[list[Record]] = ([r] for r in records)
        tally.format, tally.source_rows = task, len(records)
        num = None  # the generator already made exactly the rows asked for
    else:
        stem = Path(source).stem if Path(source).expanduser().exists() else source.split("/")[-1]
        # One row at a time from the source to the output files: memory does not grow with the data set.
        groups = iter_groups(iter_rows(source, split), format, turns, skip_invalid,
                             re.sub(r"[^\w.-]+", "_", stem), show_progress, tally)
    with _prepared_dir(out_dir, overwrite) as tmp:
        counts = _write_splits(tmp, groups, num, test_size, seed)
        write_json(tmp / "metadata.json", {
            "source": source,
            "source_fingerprint": _source_fingerprint(source),
            "format": tally.format,
            "counts": counts,
            "source_rows": tally.source_rows,
            "dropped": {"total": sum(tally.dropped.values()), "reasons": dict(tally.dropped.most_common())},
            "options": options,
        })
    return out_dir


def ensure_prepared(source: str, out_dir: str | Path, **options: Any) -> Path:
    """``out_dir`` prepared from ``source`` with ``options``: reused when its metadata (source, options,
    file fingerprint) matches, else (re)built. For stages that accept any source in ``data.source``."""
    out_dir = Path(out_dir)
    if is_prepared_dir(out_dir) and Path(source).expanduser().resolve() == out_dir.resolve():
        return out_dir  # the source is this very directory
    if is_prepared_dir(out_dir):
        meta = read_json(out_dir / "metadata.json")
        wanted = {**DEFAULT_OPTIONS, **{k: v for k, v in options.items() if k in DEFAULT_OPTIONS}}
        if (meta.get("source") == source and meta.get("options") == json.loads(json.dumps(wanted))
                and meta.get("source_fingerprint") == _source_fingerprint(source)):
            return out_dir
    return prepare_source(source, out_dir, overwrite=True, **options)


def load_sft(path: str | Path, split: str = "train") -> list[Record]:
    """Canonical SFT records of a prepared directory's ``<split>.jsonl`` or of a .jsonl file.

    Each record is validated (id, messages ending with a user turn, reference); a bad one raises
    DataError naming the file, line and field.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        file = path / f"{split}.jsonl"
        if not file.is_file():
            found = sorted(p.stem for p in path.glob("*.jsonl"))
            raise DataError(f"no '{split}' split here (found: {', '.join(found) or 'no .jsonl files'})",
                            path=path)
        path = file
    elif not path.is_file():
        raise DataError("not found", path=path)
    elif path.suffix.lower() != ".jsonl":
        raise DataError("expected a prepared data directory or a .jsonl file of SFT records; "
                        "run `selfplay data prepare` on it first", path=path)
    records, seen = [], set()
    for ref, row in iter_jsonl_rows(path):
        if isinstance(row, DataError):
            raise row
        record = validate_sft_record(row, ref)
        if record["id"] in seen:
            raise ref.error(f"duplicate id '{record['id']}'", "id")
        seen.add(record["id"])
        records.append(record)
    if not records:
        raise DataError("no records: the file is empty", path=path)
    return records

