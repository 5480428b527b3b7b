"""A full disk at chosen write points of a tiny loop, per method, on a real small tmpfs.

Each cell runs ``selfplay loop`` with its run directory on a tmpfs; right before the chosen write (the first
``selfplay.io.writing`` block for that file) a balloon file fills the tmpfs, so the kernel answers ENOSPC to
whatever is written next. The command must stop with exit code 3 and one ``Error: no space left on device
while writing …`` line naming a file of the run, no traceback; every file written before must be whole (JSONL
files only whole records, JSON files parseable, no temporary files left). Then the balloon is deleted and the
same command rerun: it must complete to the same records, metrics and weights as an uninterrupted run.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the tests skip with that reason. The default run covers
each method and each write point at least once; ``SELFPLAY_DISK_MATRIX=full`` runs every cell, and
``python tests/test_disk_full.py`` runs every cell and prints the disk-full matrix as a Markdown table.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FS_SIZE = "96m"
LOOP = ["--iters", "1", "--set", "data.num=12", "--set", "data.eval_num=4", "--set", "generate.max_new_tokens=12",
        "--set", "generate.batch_size=4", "--set", "train.batch_size=2", "--set", "train.grad_accum=1",
        "--set", "train.lr=1e-3", "--set", "train.precision=fp32", "--set", "model.dtype=float32",
        "--set", "eval.max_new_tokens=8", "--set", "train.logging_steps=1", "--set", "train.save_steps=1"]
METHODS = {
    "spin": [],
    # token F1 against a reference of words random text holds: samples of a prompt score differently
    # (with verifier:arith a random model's samples are all wrong, all equal, and SPPO has no pair to train on)
    "sppo (verifier judge)": ["--set", "rank.judge=verifier:f1", "--set", "generate.n=4",
                              "--set", "generate.max_new_tokens=24"],
    "rise": ["--set", "rise.env=arith", "--set", "rise.num_samples=[1, 2]", "--set", "rise.eval_turns=2",
             "--set", "rise.eval_parallel=2", "--set", "train.max_length=256", "--set", "train.max_prompt_length=200"],
    "sft": [],
}
COLLECTED = {"spin": "generate", "sppo (verifier judge)": "rank", "rise": "rollout"}


@dataclass(frozen=True)
class WritePoint:
    name: str
    matches: Callable[[Path, str], bool]  # (path being written, method) -> is this the write point
    occurrence: int = 1  # fill the disk before the n-th matching write


WRITE_POINTS = [
    WritePoint("data prepare (data/train.jsonl)", lambda p, m: p.name == "train.jsonl" and ".data.tmp-" in str(p)),
    WritePoint("2nd record of the collection (generate/rank/rollout shard)",
               lambda p, m: m in COLLECTED and re.search(rf"iter_0/{COLLECTED[m]}/shard-", str(p)) is not None, 2),
    WritePoint("reference log-probs (train/ref_logps.jsonl)", lambda p, m: p.name == "ref_logps.jsonl"),
    WritePoint("training checkpoint (train/checkpoint)", lambda p, m: p.name == "checkpoint"),
    WritePoint("final model (train/model)", lambda p, m: p.name == "model" and p.parent.name == "train"),
    WritePoint("3rd state.json update", lambda p, m: p.name == "state.json", 3),
    WritePoint("report plot (eval/plots/iterations.png)", lambda p, m: p.name == "iterations.png"),
]
# The cells of the default run: every method and every write point at least once.
DEFAULT_CELLS = {("spin", WRITE_POINTS[1].name), ("spin", WRITE_POINTS[4].name),
                 ("sppo (verifier judge)", WRITE_POINTS[1].name), ("sppo (verifier judge)", WRITE_POINTS[2].name),
                 ("rise", WRITE_POINTS[1].name), ("rise", WRITE_POINTS[3].name), ("sft", WRITE_POINTS[0].name),
                 ("sft", WRITE_POINTS[5].name), ("sft", WRITE_POINTS[6].name)}


def applies(point: WritePoint, method: str) -> bool:
    """Write points a method does not have: no collection (sft), no reference pass (rise, sft)."""
    if point is WRITE_POINTS[1]:
        return method in COLLECTED
    if point is WRITE_POINTS[2]:
        return method in ("spin", "sppo (verifier judge)")
    return True


# --------------------------------------------------------------------------- a small file system


@contextlib.contextmanager
def small_fs(where: Path, size: str = FS_SIZE) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted at ``where`` (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Fill ``fs`` to the last byte with a balloon file; returns it (delete it to free the space)."""
    balloon = fs / f"balloon-{uuid.uuid4().hex[:6]}"
    fd = os.open(balloon, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return balloon


# --------------------------------------------------------------------------- one cell


@dataclass
class Cell:
    method: str
    point: str
    exit_code: int
    message: str
    fired: bool
    intact: list[str]  # problems found in what was written before (empty: intact)
    rerun_code: int = -1
    equal: list[str] | None = None  # differences from the uninterrupted run (empty: equal)


def data_source(method: str, model: Path) -> str:
    """synth:arith, or for SPPO's F1 verifier a chat file whose answers share words with random text."""
    if not method.startswith("sppo"):
        return "synth:arith"
    path = model.parent / "sppo_f1_v2.jsonl"
    if not path.exists():
        # one-character "words": a random model's samples hold some of them (random bytes rarely make words)
        answer = "0 1 2 3 4 5 6 7 8 9 b c d e f h i j k l m n o p q r s t u v w x y z is in on or"
        path.write_text("".join(json.dumps({"id": f"r{i}", "messages": [
            {"role": "user", "content": f"Question {i}: how many apples does Tom have?"},
            {"role": "assistant", "content": answer}]}) + "\n" for i in range(16)))
    return str(path)


def loop_args(model: Path, method: str, run_dir: Path) -> list[str]:
    return ["loop", "--method", method.split()[0], "--model", str(model), "--run-dir", str(run_dir),
            "--data", data_source(method, model), *LOOP, *METHODS[method]]


def _invoke(args: list[str]) -> tuple[int, str, BaseException | None]:
    from typer.testing import CliRunner

    from selfplay.cli.main import app

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output, result.exception if not isinstance(result.exception, SystemExit) else None


def _filling_writes(fs: Path, method: str, point: WritePoint, monkeypatch: pytest.MonkeyPatch,
                    fired: dict) -> None:
    """Wrap every ``writing`` block so the disk fills right before the chosen one."""
    import selfplay.io
    import selfplay.runs
    import selfplay.stages.train_io

    real = selfplay.io.writing
    seen = {"n": 0}

    @contextlib.contextmanager
    def hooked(path: Path, needed: int | None = None) -> Iterator[None]:
        # only the writes themselves (they know their size), not the opening of an append-only file
        if not fired and needed is not None and point.matches(Path(path), method):
            seen["n"] += 1
            if seen["n"] == point.occurrence:
                fired.update(path=str(path), snapshot=_snapshot(fs), balloon=fill(fs))
        with real(path, needed):
            yield

    for module in (selfplay.io, selfplay.runs, selfplay.stages.train_io):
        monkeypatch.setattr(module, "writing", hooked)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every finished file (temporary files of a write in progress are the writers' to remove)."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and "balloon" not in p.name
            and ".lock" not in p.name and not _temporary(p)}


def _temporary(p: Path) -> bool:
    return p.name.endswith(".tmp") or ".tmp/" in str(p) or re.search(r"\.tmp-[0-9a-f]+", str(p)) is not None


def check_intact(run_dir: Path, before: dict[str, bytes]) -> list[str]:
    """What is not whole after the failure: torn JSONL, unreadable JSON, temporary leftovers, files written
    before the disk filled that changed other than by whole appended records."""
    if not run_dir.exists():
        return []  # the loop removes a run directory that its own data preparation failed to fill
    problems = []
    for p in run_dir.rglob("*"):
        if not p.is_file() or ".lock" in p.name:
            continue
        if p.suffix == ".jsonl":
            text = p.read_text()
            if text and not text.endswith("\n"):
                problems.append(f"torn last line: {p}")
            try:
                [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError:
                problems.append(f"malformed JSONL: {p}")
        elif p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except ValueError:
                problems.append(f"malformed JSON: {p}")
        if _temporary(p):
            problems.append(f"temporary file left: {p}")
    for path, data in before.items():
        p = Path(path)
        if not p.exists():
            if "checkpoint" not in path and ".data.tmp-" not in path:  # a checkpoint is removed when superseded
                problems.append(f"removed: {path}")
            continue
        now = p.read_bytes()
        if now != data and not (p.suffix == ".jsonl" and now.startswith(data)):
            problems.append(f"changed: {path}")
    return problems


def compare_runs(ours: Path, clean: Path) -> list[str]:
    """Differences between two finished runs: records, metrics (timings aside) and weights."""
    from safetensors.torch import load_file

    differences = []
    for p in sorted(clean.rglob("*.jsonl")):
        rel = p.relative_to(clean)
        q = ours / rel
        if "metrics.jsonl" in rel.name or not q.exists():
            differences += [] if q.exists() or "shard-" in rel.name else [f"missing: {rel}"]
            continue
        a, b = _strip(p), _strip(q)
        if rel.name.startswith("shard-"):
            # A shard is written as rows finish, and which rows finish first depends on which prompts share a
            # decode batch (a resumed shard has fewer); merge_shards puts them in data order, compared exactly.
            a, b = (sorted(rows, key=lambda r: json.dumps(r, sort_keys=True)) for rows in (a, b))
        if a != b:
            differences.append(f"differs: {rel}")
    for p in sorted(clean.rglob("*.safetensors")):
        rel = p.relative_to(clean)
        a, b = load_file(p), load_file(ours / rel)
        if a.keys() != b.keys() or any(not (a[k] - b[k]).abs().max() <= 1e-6 for k in a):
            differences.append(f"weights differ: {rel}")
    return differences


def _strip(path: Path) -> list[dict]:
    """Rows without what depends on timing or on where the run lives."""
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in row.items() if not re.search(r"per_s|seconds|time|path|model$", k)})
    return rows


def run_cell(method: str, point: WritePoint, work: Path, model: Path, clean: Path,
             monkeypatch: pytest.MonkeyPatch) -> Cell:
    with small_fs(work / "fs") as fs:
        run_dir = fs / "run"
        fired: dict = {}
        with monkeypatch.context() as patch:
            _filling_writes(fs, method, point, patch, fired)
            code, output, exception = _invoke(loop_args(model, method, run_dir))
        error = next((line for line in output.splitlines() if line.startswith("Error:")), "")
        message = error or (f"{type(exception).__name__}: {exception}" if exception else output.strip()[-300:])
        intact = check_intact(run_dir, fired.get("snapshot", {})) if fired else ["the write point was never reached"]
        if exception is not None or "Traceback" in output:
            intact.append("a traceback")
        cell = Cell(method, point.name, code, message.replace(str(fs), "FS"), bool(fired), intact)
        if fired:
            fired["balloon"].unlink()
        rerun, rerun_output, _ = _invoke(loop_args(model, method, run_dir))
        cell.rerun_code = rerun
        cell.equal = compare_runs(run_dir, clean) if rerun == 0 else [rerun_output.strip()[-300:]]
    return cell


def check(cell: Cell) -> None:
    assert cell.fired, cell
    assert cell.exit_code == 3, cell
    assert cell.message.startswith("Error: no space left on device while writing FS/run"), cell
    assert "intact: free some space and rerun" in cell.message, cell
    assert cell.intact == [], cell
    assert cell.rerun_code == 0 and cell.equal == [], cell


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Callable[[str], Path]:
    """The uninterrupted run of each method (made on first use, on the ordinary disk)."""
    made: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in made:
            run = tmp_path_factory.mktemp("clean") / "run"
            code, output, exception = _invoke(loop_args(tiny_model, method, run))
            assert code == 0 and exception is None, output
            made[method] = run
        return made[method]

    return get


CELLS = [(m, p) for p in WRITE_POINTS for m in METHODS if applies(p, m)]


@pytest.mark.parametrize(("method", "point"), CELLS, ids=[f"{m.split()[0]}-{p.name.split(' (')[0]}" for m, p in CELLS])
def test_disk_full_at_a_write_point(method: str, point: WritePoint, tmp_path: Path, tiny_model: Path,
                                    clean_runs, monkeypatch: pytest.MonkeyPatch) -> None:
    if (method, point.name) not in DEFAULT_CELLS and os.environ.get("SELFPLAY_DISK_MATRIX") != "full":
        pytest.skip("beyond the default cells: SELFPLAY_DISK_MATRIX=full runs it (python tests/test_disk_full.py too)")
    check(run_cell(method, point, tmp_path, tiny_model, clean_runs(method), monkeypatch))


def test_appends_roll_back_a_record_the_disk_had_no_room_for(tmp_path: Path) -> None:
    from selfplay.errors import DiskFullError
    from selfplay.io import JsonlAppender, read_jsonl

    with small_fs(tmp_path / "fs", "64k") as fs:
        path = fs / "records.jsonl"
        written = 0
        with JsonlAppender(path) as out, pytest.raises(DiskFullError) as err:
            while True:
                out.write({"id": written, "text": "x" * 1000})
                written += 1
        assert f"while writing {path}" in str(err.value) and "needs about 1.0 KiB" in str(err.value)
        assert err.value.exit_code == 3
        assert [r["id"] for r in read_jsonl(path)] == list(range(written))  # whole records only
        path.unlink()  # free the space: appending works again
        with JsonlAppender(path) as out:
            out.write({"id": "after"})
        assert read_jsonl(path) == [{"id": "after"}]


def test_atomic_writes_keep_the_previous_file_and_leave_no_temporary(tmp_path: Path) -> None:
    from selfplay.errors import DiskFullError
    from selfplay.io import atomic_dir, atomic_write_text, read_json, write_json

    with small_fs(tmp_path / "fs", "128k") as fs:
        write_json(fs / "state.json", {"done": 1})
        (fs / "model").mkdir()
        (fs / "model" / "weights").write_bytes(b"old")
        balloon = fill(fs)
        with pytest.raises(DiskFullError, match=r"while writing .*state\.json \(needs about"):
            atomic_write_text(fs / "state.json", json.dumps({"done": 2, "pad": "x" * 10000}))
        assert read_json(fs / "state.json") == {"done": 1}
        with pytest.raises(DiskFullError, match=r"while writing .*model \(needs about 1\.0 MiB"):
            with atomic_dir(fs / "model", needed=2**20) as tmp:
                (tmp / "weights").write_bytes(b"\0" * 2**20)
        assert (fs / "model" / "weights").read_bytes() == b"old"
        assert sorted(p.name for p in fs.iterdir()) == sorted(["state.json", "model", balloon.name])
        balloon.unlink()
        with atomic_dir(fs / "model") as tmp:
            (tmp / "weights").write_bytes(b"new")
        assert (fs / "model" / "weights").read_bytes() == b"new" and not (fs / "model.old").exists()


def test_a_library_error_on_a_full_disk_is_one_message_too(tmp_path: Path, cli, monkeypatch) -> None:
    """safetensors and torch.save wrap ENOSPC in their own exceptions; the CLI still prints one line, exit 3."""
    import selfplay.stages.rank as rank

    def boom(*args, **kw):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(rank, "run_rank", boom)
    res = cli(["rank", "--data", tmp_path / "x.jsonl", "--out", tmp_path / "y.jsonl", "--judge", "verifier:arith"])
    assert res.exit_code == 3 and res.output.startswith("Error: no space left on device.")


if __name__ == "__main__":  # python tests/test_disk_full.py: every cell, then the matrix as a Markdown table
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from selfplay.testing import build_tiny_llama

    rows = []
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        model = build_tiny_llama(Path(tmp) / "tiny")
        cleans = {}
        for method in METHODS:
            cleans[method] = Path(tmp) / f"clean-{method.split()[0]}"
            code, output, _ = _invoke(loop_args(model, method, cleans[method]))
            assert code == 0, output
        for method, point in CELLS:
            work = Path(tmp) / uuid.uuid4().hex[:8]
            cell = run_cell(method, point, work, model, cleans[method], mp)
            rows.append(cell)
            print(cell, file=sys.stderr)
    print("| write point | method | exit | message | earlier files intact | rerun = uninterrupted |")
    print("|---|---|---|---|---|---|")
    for c in rows:
        msg = c.message.replace("|", "\\|").split(". Everything written before")[0]
        print(f"| {c.point} | {c.method} | {c.exit_code} | {msg} | {'yes' if not c.intact else '; '.join(c.intact)} | "
              f"{'yes' if c.rerun_code == 0 and not c.equal else 'no: ' + '; '.join(c.equal or [])} |")
