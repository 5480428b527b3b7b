"""Read raw rows from any supported source: JSONL, JSON, parquet, CSV/TSV, a ``datasets.save_to_disk``
directory, a directory of split files, or a Hugging Face Hub id (``owner/name`` or ``owner/name:config``).

Every reader yields ``(RowRef, row)`` pairs where ``row`` is a dict or, for a row that cannot even be
parsed, the :class:`DataError` describing it, so ``--skip-invalid`` can drop it and keep going.
:func:`iter_rows` streams them (JSONL and CSV line by line, parquet by record batch, ``datasets`` tables row by
row from their memory-mapped Arrow files), so ``data prepare`` holds one row at a time; a JSON file is the
exception, parsed whole. :func:`read_rows` is the list of them, for the small inputs of the evaluations.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfplay.data.schema import RowRef
from selfplay.errors import DataError, UserError

RawRow = tuple[RowRef, "dict[str, Any] | DataError"]

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


def read_rows(source: str, split: str = "train") -> list[RawRow]:
    """All raw rows of ``source``; ``split`` picks the split of a multi-split source (hub, directory)."""
    return list(iter_rows(source, split))


def iter_rows(source: str, split: str = "train") -> Iterator[RawRow]:
    """The raw rows of ``source``, one at a time; DataError when it has none."""
    path = Path(source).expanduser()
    if path.is_dir():
        rows = _read_directory(path, split)
    elif path.is_file():
        rows = iter_file(path)
    elif path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError("file not found", path=source)
    else:
        rows = _read_hub(source, split)
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise DataError("no rows: the source is empty", path=source)


def read_file(path: Path) -> list[RawRow]:
    """Raw rows of one local file, chosen by its suffix."""
    return list(iter_file(path))


def iter_file(path: Path) -> Iterator[RawRow]:
    """Raw rows of one local file, chosen by its suffix, one at a time."""
    suffix = path.suffix.lower()
    readers = {".jsonl": iter_jsonl_rows, ".json": _read_json, ".parquet": _read_parquet,
               ".csv": _read_csv, ".tsv": _read_csv}
    if suffix not in readers:
        raise DataError(f"unsupported file type '{suffix}'; expected one of {', '.join(FILE_SUFFIXES)} "
                        "or a directory", path=path)
    return iter(readers[suffix](path))


def read_jsonl_rows(path: Path) -> list[RawRow]:
    """JSONL rows by 1-based line number (see :func:`iter_jsonl_rows`)."""
    return list(iter_jsonl_rows(path))


def iter_jsonl_rows(path: Path) -> Iterator[RawRow]:
    """JSONL rows by 1-based line number, one at a time.

    Not ``selfplay.io.iter_jsonl``: that stops at the first bad line, while ``--skip-invalid``
    must record the bad line and keep reading.
    """
    index = 0
    try:
        with path.open("r", encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                ref = RowRef(str(path), index=index, line=lineno)
                index += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield ref, ref.error(f"malformed JSON ({e.msg})")
                    continue
                if isinstance(obj, dict):
                    yield ref, obj
                else:
                    yield ref, ref.error(f"expected a JSON object, got {type(obj).__name__}")
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path) from None


def _read_json(path: Path) -> list[RawRow]:
    """A JSON array of objects (row = index) or an object of objects keyed by id (row = position)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path) from None
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line under a .json name: read it as JSONL
            return list(iter_jsonl_rows(path))
        raise DataError(f"not valid JSON ({e.msg})", path=path, line=e.lineno) from None
    if isinstance(data, list):
        items: list[tuple[str | None, Any]] = [(None, item) for item in data]
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        items = [(str(k), v) for k, v in data.items()]
    else:
        raise DataError("expected a JSON array of objects, or an object whose values are objects "
                        "keyed by id", path=path)
    rows: list[RawRow] = []
    for i, (key, item) in enumerate(items):
        ref = RowRef(str(path), index=i, row=i, key=key)
        if isinstance(item, dict):
            rows.append((ref, item))
        else:
            rows.append((ref, ref.error(f"expected a JSON object, got {type(item).__name__}")))
    return rows


def _read_parquet(path: Path, start: int = 0) -> Iterator[RawRow]:
    """Rows of a parquet file by record batch (a whole table in Python objects is ~10x its file size);
    ``start``: the index of its first row among several shards."""
    import pyarrow.parquet as pq  # installed with `datasets`

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield RowRef(str(path), index=start + i, row=start + i), row
                i += 1
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types (ArrowInvalid, OSError) for unreadable files
        raise DataError(f"not a readable parquet file ({e})", path=path) from None


def _decode_cell(cell: str) -> Any:
    """CSV cells holding JSON lists/objects (e.g. a ``messages`` column) are decoded; others stay text."""
    stripped = cell.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return cell
    return cell


# CSV files without a header row, recognised by their first row: (test on its cells, column names). MMLU's
# files (hendrycks/test, FireAct's data/mmlu) are "question, A, B, C, D, answer letter" with no header.
HEADERLESS_CSV: list[tuple[Callable[[list[str]], bool], tuple[str, ...]]] = [
    (lambda cells: len(cells) == 6 and cells[5].strip() in ("A", "B", "C", "D"),
     ("question", "A", "B", "C", "D", "answer")),
]


def _csv_columns(path: Path, delimiter: str) -> tuple[str, ...] | None:
    """The column names of a header-less CSV layout the file's first row matches, else None (a header)."""
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        first = next(csv.reader(f, delimiter=delimiter), None)
    if first is None:
        return None
    return next((columns for test, columns in HEADERLESS_CSV if test(first)), None)


def _read_csv(path: Path) -> Iterator[RawRow]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        columns = _csv_columns(path, delimiter)
        # A known header-less layout holds plain text (an MMLU choice "[0, 1]" is not a JSON list).
        decode: Callable[[str], Any] = _decode_cell if columns is None else str
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, fieldnames=columns, delimiter=delimiter)
            for i, raw in enumerate(reader):
                ref = RowRef(str(path), index=i, row=i)
                if None in raw:
                    yield ref, ref.error("the row has more cells than the header")
                elif None in raw.values():
                    yield ref, ref.error("the row has fewer cells than the header")
                else:
                    yield ref, {k: decode(v) for k, v in raw.items()}
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path) from None
    except csv.Error as e:
        raise DataError(f"not valid CSV ({e})", path=path) from None


def _read_directory(path: Path, split: str) -> Iterator[RawRow]:
    """A ``save_to_disk`` directory, or a directory holding ``<split>.jsonl|.json|.parquet|.csv`` or
    hub-style shards ``**/<split>-*.parquet``."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved_dataset(path, split)
    for suffix in FILE_SUFFIXES:
        candidate = path / f"{split}{suffix}"
        if candidate.is_file():
            return iter_file(candidate)
    shards = sorted(path.glob(f"**/{split}-*.parquet"))
    if shards:
        return _read_parquet_shards(shards)
    found = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    raise DataError(f"no split '{split}' here: expected a `datasets` save_to_disk directory or a file "
                    f"named {split}.jsonl/.json/.parquet/.csv (found: {', '.join(found) or 'nothing'})",
                    path=path)


def _read_parquet_shards(shards: list[Path]) -> Iterator[RawRow]:
    """Hub-style parquet shards as one sequence: indices run on across shards, rows are per shard."""
    seen = 0
    for shard in shards:
        for ref, row in _read_parquet(shard):
            yield RowRef(ref.path, index=seen, row=ref.row), row
            seen += 1


def _read_saved_dataset(path: Path, split: str) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError/ValueError/ArrowInvalid for broken dirs
        raise DataError(f"not a readable `datasets` directory ({e})", path=path) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"no split '{split}'; available: {', '.join(loaded)}", path=path)
        loaded = loaded[split]
    # Iterating a Dataset reads its memory-mapped Arrow file row by row (to_list() would copy it all).
    return ((RowRef(str(path), index=i, row=i), row) for i, row in enumerate(loaded))


def _read_hub(source: str, split: str) -> Iterator[RawRow]:
    """A Hugging Face Hub dataset: ``owner/name`` or ``owner/name:config`` (never with remote code)."""
    import datasets

    name, _, config = source.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown id, unknown split, auth: all are the user's to fix
        raise UserError(
            f"could not load '{source}': it is not a local file or directory, and loading it from the "
            f"Hugging Face Hub failed ({type(e).__name__}: {e}). Without network, download it elsewhere "
            "and pass the local file or `save_to_disk` directory instead."
        ) from None
    return ((RowRef(source, index=i, row=i), row) for i, row in enumerate(loaded))
