"""File helpers shared by every stage: atomic writes, strict JSONL reading, resumable appends, and a full
disk reported as one message naming the file.

Why by hand: ``datasets`` writes whole tables, but resumability needs per-record appends that survive
SIGKILL (a torn last line is dropped on resume) and errors that name the file and line.

Every writer of a run directory goes through here: whole files by temporary file + fsync + rename
(:func:`atomic_write_bytes`), directories (models, checkpoints) by temporary directory + fsync + rename
(:func:`atomic_dir`), records by per-record appends that a failed write rolls back (:class:`JsonlAppender`).
A full disk anywhere becomes :class:`~selfplay.errors.DiskFullError` naming the file (:func:`writing`), and
what was written before stays whole, so the rerun after freeing space continues as after a kill.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from selfplay.errors import DataError, DiskFullError, free_bytes, is_disk_full

_UMASK = os.umask(0)
os.umask(_UMASK)
# Below this many free bytes an error while writing is a full disk, whatever the library called it (torch.save
# reports ENOSPC as "[enforce fail at inline_container.cc] unexpected pos ...").
_NEARLY_FULL = 64 * 1024


@contextmanager
def writing(path: Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk met inside the block into :class:`DiskFullError` naming ``path`` (and ``needed`` bytes)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        free = free_bytes(path)
        if is_disk_full(e) or (free is not None and free < max(needed or 0, _NEARLY_FULL)):
            raise DiskFullError(path, needed) from None
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in directory ``path`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def cache_root() -> Path:
    """Where selfplay keeps what it derives once per machine (converted models, the bf16 probe):
    ``$SELFPLAY_CACHE`` or ``~/.cache/selfplay``."""
    return Path(os.environ.get("SELFPLAY_CACHE") or Path.home() / ".cache" / "selfplay")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: readers never see half a file, and a
    failed write (a full disk) leaves the previous file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path, len(data)):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextmanager
def atomic_dir(dest: Path, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``dest`` to fill; when the block succeeds its files are
    fsynced and it replaces ``dest`` (the previous ``dest`` is kept until the new one is in place). When the
    block fails — a full disk (:class:`DiskFullError` naming ``dest`` and ``needed`` bytes) or anything else —
    the temporary directory is removed and ``dest`` is left as it was."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(dest, needed):
            tmp.mkdir(parents=True)
            yield tmp
            fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial copy is useless, and it holds the space the rerun needs
        raise
    swap_in(tmp, dest)


def swap_in(tmp: Path, dest: Path) -> None:
    """Replace directory ``dest`` by the complete directory ``tmp`` with two renames, through ``dest.old``
    (a kill between them leaves ``dest`` missing: ``selfplay.stages.train_io.recover_checkpoint`` finishes it).
    A ``dest.old`` left by a swap killed before its end goes first: rename() onto a non-empty directory fails,
    and would fail at every later swap."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_figure(fig: Any, path: Path, **savefig_kw: Any) -> None:
    """``fig.savefig`` rendered in memory, then written atomically (matplotlib writes in place)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig_kw)
    atomic_write_bytes(Path(path), buffer.getvalue())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", path=path, line=e.lineno) from None


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write rows as JSONL, one at a time (never the whole file in memory); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with JsonlWriter(Path(tmp), name=path) as out:
            for row in rows:
                out.write(row)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return out.count


class JsonlWriter:
    """A new JSONL file written line by line, buffered, fsynced on close: for outputs too large to hold in
    memory. It is meant for a temporary place renamed in when complete (:func:`write_jsonl`, a temporary
    directory); a full disk is :class:`DiskFullError` naming ``name`` (default: the file)."""

    def __init__(self, path: Path, *, name: Path | None = None) -> None:
        self.path, self.name, self.count, self.size = Path(path), Path(name or path), 0, 0
        with writing(self.name):
            self._f = self.path.open("w", encoding="utf-8")

    def write_line(self, line: str) -> None:
        """One line of JSON text (without its newline)."""
        self.size += len(line.encode("utf-8")) + 1
        with writing(self.name, self.size):  # the buffer goes to disk now and then: the file's size so far
            self._f.write(line)
            self._f.write("\n")
        self.count += 1

    def write(self, row: dict[str, Any]) -> None:
        self.write_line(json.dumps(row, ensure_ascii=False))

    def close(self) -> None:
        with writing(self.name, self.size):
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # failing already: close without a second error (a full disk fails the flush again)
            self._f.close()
        except OSError:
            pass


def iter_jsonl(path: Path, *, tolerate_torn_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield JSON objects from ``path``; a malformed line raises DataError naming the line.

    ``tolerate_torn_tail``: for append-only files of our own that a kill may have cut mid-line,
    silently drop an unterminated last line instead of failing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            obj = _json_line(line, path, lineno, tolerate_torn_tail)
            if obj is _TORN:
                return
            if obj is not None:
                yield obj


def iter_jsonl_offsets(path: Path, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """:func:`iter_jsonl` over a file of ours (``\\n`` line ends) that also yields each object's line number and
    byte offset: ``(line, offset, obj)``. :func:`read_jsonl_at` reads the object at an offset back, so a merge
    can hold offsets instead of records."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            obj = _json_line(raw.decode("utf-8"), path, lineno, tolerate_torn_tail)
            if obj is _TORN:
                return
            if obj is not None:
                yield lineno, start, obj


_TORN: Any = object()  # an unterminated last line that ``tolerate_torn_tail`` drops


def _json_line(line: str, path: Path, lineno: int, tolerate_torn_tail: bool) -> dict[str, Any] | None:
    """The object on one JSONL line; None for a blank line, ``_TORN`` for a torn tail that is tolerated."""
    if not line.strip():
        return None
    if tolerate_torn_tail and not line.endswith("\n"):
        return _TORN
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path=path, line=lineno) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno)
    return obj


def read_jsonl_at(locations: Iterable[tuple[Path, int]]) -> Iterator[dict[str, Any]]:
    """The JSON objects on the lines starting at ``(path, byte offset)``, in the order given (offsets from
    :func:`iter_jsonl_offsets`, which already checked those lines); one open handle per file."""
    handles: dict[Path, IO[bytes]] = {}
    try:
        for path, offset in locations:
            f = handles.get(path)
            if f is None:
                f = handles[path] = Path(path).open("rb")
            f.seek(offset)
            yield json.loads(f.readline())
    finally:
        for f in handles.values():
            f.close()


def read_jsonl(path: Path, **kw: Any) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, **kw))


class JsonlAppender:
    """Append records one per line, fsynced, for resumable stages.

    On open it truncates a torn last line left by a kill, so the file is always whole records. A record
    whose write fails (a full disk) is rolled back to the previous end of the file and reported as
    :class:`DiskFullError` naming the file. ``lazy``: the file is created on the first record, so a stage
    that fails before producing anything (a remote judge that never answers) leaves no empty output behind.
    """

    def __init__(self, path: Path, *, lazy: bool = False) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                with self.path.open("r+b") as f:
                    f.truncate(cut)
        if not lazy:
            self._open()

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with writing(self.path):
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        return self._fd

    def write(self, row: dict[str, Any]) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        fd = self._open()
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            with writing(self.path, len(data)):
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view):]
                os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, end)  # no torn record left behind, also for the rest of this run
            except OSError:
                pass
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
