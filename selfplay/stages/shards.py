"""One home for the sharded stages' bookkeeping: shard plans, manifests, resume, merge, first-use models.

Generate and the RISE and agent rollouts write one record per prompt into shard files of an output
directory ``G`` (rank cuts its sample sets into contiguous slices instead, :mod:`selfplay.stages.rank`)::

    G/manifest.json                      prompt ids in data order, shuffle seed, sharding, sampler settings
    G/config.yaml                        the resolved config
    G/shard-{K:05d}-of-{F:05d}.jsonl     one record per finished prompt

Prompts are shuffled by ``generate.seed`` and cut into shards like the anchors' flags: ``data_frac=K``
with ``frac_len=L`` is the K-th slice of length L; with ``num_fracs=F`` it is the K-th of F near-equal
slices. Each shard is appended to per finished prompt, so a killed run resumes where it stopped
(:func:`open_shard`); :func:`merge_shards` joins the shards back into data order and checks nothing is
missing or doubled. A worker given several shards loads its model once, on first use
(:class:`OnFirstUse`, :func:`with_one_sampler`). Which stages are sharded, and how each runs, merges and
is launched: :data:`selfplay.stages.parallel.SHARDED_STAGES`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.config import Config, save_config
from selfplay.errors import DataError, UserError
from selfplay.io import iter_jsonl, iter_jsonl_offsets, read_json, read_jsonl_at, write_json, write_jsonl
from selfplay.runs import output_lock

MANIFEST = "manifest.json"
SHARD_PATTERN = re.compile(r"^shard-(\d{5})-of-(\d{5})\.jsonl$")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.jsonl"


@dataclass(frozen=True)
class Sharding:
    """How the shuffled prompts are cut: ``num_fracs`` near-equal slices, or slices of ``frac_len``."""

    num_fracs: int | None = None
    frac_len: int | None = None

    def count(self, num_prompts: int) -> int:
        """Number of shards covering ``num_prompts`` prompts."""
        if self.frac_len is not None:
            return max(1, math.ceil(num_prompts / self.frac_len))
        return self.num_fracs or 1

    def bounds(self, index: int, num_prompts: int) -> tuple[int, int]:
        """[start, end) of shard ``index`` within the shuffled prompts."""
        if self.frac_len is not None:
            return min(index * self.frac_len, num_prompts), min((index + 1) * self.frac_len, num_prompts)
        count = self.count(num_prompts)
        size, extra = divmod(num_prompts, count)
        start = index * size + min(index, extra)
        return start, start + size + (1 if index < extra else 0)


def sharding_from_config(cfg: Config, shard: tuple[int, int] | None) -> tuple[Sharding, int]:
    """(sharding, this shard's index) from an explicit ``shard=(K, F)`` or the ``generate.*`` flags."""
    if shard is not None:
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise UserError(f"shard index must be in 0..{count - 1} for {count} shards, got {index}")
        return Sharding(num_fracs=count), index
    g = cfg.generate
    if g.num_fracs is not None and g.frac_len is not None:
        raise UserError("give either --num-fracs or --frac-len with --data-frac, not both.")
    if g.data_frac is None:
        if g.num_fracs is not None or g.frac_len is not None:
            raise UserError("--num-fracs/--frac-len select a shard only together with --data-frac K.")
        return Sharding(num_fracs=1), 0
    if g.frac_len is not None:
        if g.frac_len < 1 or g.data_frac < 0:
            raise UserError(f"--frac-len must be >= 1 and --data-frac >= 0, got {g.frac_len} and {g.data_frac}")
        return Sharding(frac_len=g.frac_len), g.data_frac
    if g.num_fracs is None:
        raise UserError("--data-frac K needs --num-fracs F (K-th of F slices) or --frac-len L (K-th slice of L).")
    if g.num_fracs < 1 or not 0 <= g.data_frac < g.num_fracs:
        raise UserError(f"--data-frac must be in 0..{g.num_fracs - 1} for --num-fracs {g.num_fracs}, "
                        f"got {g.data_frac}")
    return Sharding(num_fracs=g.num_fracs), g.data_frac


def shuffled_order(num_prompts: int, seed: int) -> list[int]:
    """Data indices in the deterministic shuffled order that shards slice."""
    order = list(range(num_prompts))
    random.Random(seed).shuffle(order)
    return order


def shard_indices(manifest: dict[str, Any], index: int) -> list[int]:
    """Data indices of shard ``index`` under ``manifest``'s shuffle seed and sharding."""
    n = len(manifest["prompt_ids"])
    start, end = Sharding(**manifest["sharding"]).bounds(index, n)
    return shuffled_order(n, manifest["shuffle_seed"])[start:end]


def _load_prompts(data: str | Path, split: str, ids: list[str] | None) -> list[dict[str, Any]]:
    from selfplay.data.records import load_sft

    records = load_sft(data, split)
    if ids is None:
        return records
    by_id = {r["id"]: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(f"{len(missing)} requested prompt id(s) are not in {data}: {', '.join(missing[:5])}")
    if not ids:
        raise UserError(f"no prompt ids selected from {data}")
    return [by_id[i] for i in ids]


def _refuse_mixing(kind: str, existing: Any, wanted: Any, out_dir: Path) -> None:
    if isinstance(existing, dict) and isinstance(wanted, dict):  # name only the settings that differ
        keys = [k for k in {**existing, **wanted} if existing.get(k) != wanted.get(k)]
        existing, wanted = ({k: d.get(k) for k in keys} for d in (existing, wanted))
    raise UserError(
        f"{out_dir} already holds generations made with different {kind} ({existing} there, {wanted} now); "
        "refusing to mix them. Pass a new --out directory (or delete this one)."
    )


def _prepare_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, or check an existing one describes the same prompts, sharding and sampler."""
    path = out_dir / MANIFEST
    if not path.is_file():
        write_json(path, manifest)
        return
    existing = read_json(path)
    if existing.get("prompt_ids") != manifest["prompt_ids"]:
        _refuse_mixing("prompts", f"{len(existing.get('prompt_ids') or [])} prompts",
                       f"{len(manifest['prompt_ids'])} prompts", out_dir)
    for key, kind in (("sampler", "sampler settings"), ("shuffle_seed", "shuffle seed"), ("sharding", "sharding")):
        if existing.get(key) != manifest[key]:
            _refuse_mixing(kind, existing.get(key), manifest[key], out_dir)


def _done_ids(shard_path: Path, expected: set[str], sampler_info: dict[str, Any], out_dir: Path) -> set[str]:
    """Ids already generated in this shard (a torn last line is ignored); refuses foreign records."""
    done: set[str] = set()
    if not shard_path.is_file():
        return done
    for line, row in enumerate(iter_jsonl(shard_path, tolerate_torn_tail=True), start=1):
        if row.get("sampler") != sampler_info:
            _refuse_mixing("sampler settings", row.get("sampler"), sampler_info, out_dir)
        if row.get("id") not in expected:
            raise DataError(f"id {row.get('id')!r} does not belong to this shard; use a new --out",
                            path=shard_path, line=line, field="id")
        done.add(row["id"])
    return done


@dataclass(frozen=True)
class ShardJob:
    """The inputs and output of one sharded stage run; its worker processes get them as arguments."""

    data: Path  # the prompts (generate, rollouts) or the sample sets to judge (rank)
    out: Path  # the directory of shard files
    model: str = ""  # the model that samples ("" for rank: its judge is in the config)
    split: str = "train"
    skip_invalid: bool = False  # RISE: drop problems without a parsable reference answer

    def worker_args(self) -> list[str]:
        """The arguments :mod:`selfplay.stages.worker` reads back into this job."""
        args = ["--data", str(self.data), "--out", str(self.out), "--split", self.split]
        args += ["--model", self.model] if self.model else []
        return args + (["--skip-invalid"] if self.skip_invalid else [])


@dataclass
class ShardPlan:
    """One shard's share of a resumable, shardable stage: what is left to do and where it goes."""

    path: Path  # the shard's JSONL, appended to per finished prompt
    todo: list[dict[str, Any]]  # records not done yet, in shard order
    total: int  # records in the shard
    label: str  # "generate", "shard 2/4", ... for messages


@contextmanager
def open_shard(cfg: Config, model: str, data: str | Path, out_dir: Path, info: dict[str, Any], *, split: str,
               shard: tuple[int, int] | None, ids: list[str] | None, check_model: bool, stage: str = "generate",
               records: list[dict[str, Any]] | None = None) -> Iterator[ShardPlan]:
    """Shard, manifest, lock and resume bookkeeping shared by the stages that write one record per prompt
    (generate, rollout): ``info`` describes the settings every record of the directory must share.

    Validates the shard selection (and the model with ``check_model``) before creating ``out_dir``, then
    holds the shard's lock while the caller writes it: a second process on the same shard is refused,
    naming the holder (processes writing other shards of the directory are not disturbed).
    ``records`` gives the prompts already loaded (and validated) instead of reading ``data``.
    """
    from selfplay.models import resolve_model
    from selfplay.progress import console

    out_dir = Path(out_dir)
    sharding, index = sharding_from_config(cfg, shard)
    records = records if records is not None else _load_prompts(data, split, ids)
    count = sharding.count(len(records))
    if index >= count:
        raise UserError(f"--data-frac {index} is past the end: {len(records)} prompts make {count} slice(s) "
                        f"of --frac-len {sharding.frac_len}")
    manifest = {"prompt_ids": [r["id"] for r in records], "shuffle_seed": cfg.generate.seed,
                "sharding": dataclasses.asdict(sharding), "sampler": info, "data": str(data), "split": split}
    if check_model:
        resolve_model(model, cfg.model.revision)  # fail on a bad model before touching the output directory
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / shard_name(index, count)
    with output_lock(path, stage):
        _prepare_manifest(out_dir, manifest)
        resolved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=model),
                                       data=dataclasses.replace(cfg.data, source=str(data), split=split))
        save_config(resolved, out_dir / "config.yaml")
        mine = [records[i] for i in shard_indices(manifest, index)]
        done = _done_ids(path, {r["id"] for r in mine}, info, out_dir)
        label = f"{stage} shard {index + 1}/{count}" if count > 1 else stage
        if not [r for r in mine if r["id"] not in done]:
            console.print(f"{label}: all {len(mine)} prompts already done in {path}")
        elif done:
            console.print(f"{label}: resuming, {len(done)} of {len(mine)} prompts already done")
        yield ShardPlan(path, [r for r in mine if r["id"] not in done], len(mine), label)


class OnFirstUse:
    """Stands in for a sampler or judge and loads it on first use, so that a worker given several shards
    loads its model once and a worker whose shards are all finished loads none."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load, self._loaded = load, None

    def __getattr__(self, name: str) -> Any:
        if self._loaded is None:
            self._loaded = self._load()
        return getattr(self._loaded, name)


def with_one_sampler(cfg: Config, model: str, label: str, shards: list[int], num_shards: int,
                     run_shard: Callable[[tuple[int, int], Any], None]) -> None:
    """``run_shard((k, num_shards), sampler)`` for each shard k, all sharing one sampler loaded on first use
    (a shard that is already complete loads nothing); a bad model fails before any output is written."""
    from selfplay.models import resolve_model

    resolve_model(model, cfg.model.revision)
    sampler = OnFirstUse(lambda: load_sampler(cfg, model, label))
    for k in shards:
        run_shard((k, num_shards), sampler)


def shard_count(out_dir: Path) -> int | None:
    """The number of shards an existing generate/rollout directory was started with (None when new)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path)
    return Sharding(**manifest["sharding"]).count(len(manifest["prompt_ids"]))


def load_sampler(cfg: Config, model: str, label: str) -> Any:
    """The configured generation backend for ``model``, saying which device and dtype it samples in."""
    from selfplay.core.samplers import make_sampler
    from selfplay.hardware import resolve_dtype_name
    from selfplay.models import resolve_device
    from selfplay.progress import console

    g = cfg.generate
    if g.backend == "hf":
        device = resolve_device("auto")
        console.print(f"{label}: sampling on {device} in {resolve_dtype_name(cfg.model.dtype, device)}")
    sampler = make_sampler(g.backend, model, model_cfg=cfg.model, batch_size=g.batch_size,
                           tensor_parallel_size=g.tensor_parallel_size,
                           gpu_memory_utilization=g.gpu_memory_utilization, seed=g.seed)
    if g.backend == "hf" and sampler.model.device.type == "cpu":
        from selfplay.core.fast_decode import fast_step_for

        step, why = fast_step_for(sampler.model, sampler.batch_size * g.n)  # built now, reused by every decode call
        console.print(f"{label}: decode steps by " + (why if step is not None else f"the model's forward ({why})"))
    return sampler


def merge_shards(out_dir: Path, dest: Path | None = None) -> Path:
    """Join all shards of ``out_dir`` into one JSONL in data order (default ``<out_dir>.jsonl`` beside it).

    Raises UserError naming missing or incomplete shards, and DataError for duplicated or foreign ids.
    """
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).is_file():
        raise UserError(f"{out_dir} is not a generate output directory (no {MANIFEST}); "
                        "run `selfplay generate --out DIR` first.")
    where, problems = _read_shards(out_dir)
    if problems:
        raise UserError(f"cannot merge {out_dir}: " + "; ".join(problems))
    dest = Path(dest) if dest is not None else out_dir.parent / f"{out_dir.name}.jsonl"
    write_jsonl(dest, read_jsonl_at(where[i] for i in read_json(out_dir / MANIFEST)["prompt_ids"]))
    return dest


def unfinished_shards(out_dir: Path) -> list[str]:
    """What keeps ``out_dir`` from merging ("shard-... is missing", "... has 3 of 5 prompts"); [] when complete.
    Machines of a multi-node run poll this before the main machine merges."""
    if not (Path(out_dir) / MANIFEST).is_file():
        return [f"{out_dir} has no {MANIFEST} yet"]
    return _read_shards(Path(out_dir))[1]


def _read_shards(out_dir: Path) -> tuple[dict[str, tuple[Path, int]], list[str]]:
    """Where every shard record is (id -> (shard file, byte offset)), and the shards that are missing or
    incomplete; DataError for duplicated or foreign ids. Offsets, not records: a merge of 100k prompts held
    every record before (peak RSS +360 MiB at 100k UltraChat-style rows, `python -m bench.stream_bench`)."""
    manifest = read_json(out_dir / MANIFEST)
    ids = manifest["prompt_ids"]
    count = Sharding(**manifest["sharding"]).count(len(ids))
    found: dict[int, Path] = {}
    for path in sorted(out_dir.glob("shard-*.jsonl")):
        match = SHARD_PATTERN.match(path.name)
        if match is None or int(match.group(2)) != count or int(match.group(1)) >= count:
            raise UserError(f"{path} does not belong to this output's {count} shard(s); remove it or use a new --out.")
        found[int(match.group(1))] = path

    rows: dict[str, tuple[Path, int]] = {}
    problems = [f"{shard_name(k, count)} is missing" for k in range(count) if k not in found]
    for k, path in sorted(found.items()):
        expected = {ids[i] for i in shard_indices(manifest, k)}
        for line, offset, row in iter_jsonl_offsets(path, tolerate_torn_tail=True):
            row_id = row.get("id")
            if row_id not in expected:
                raise DataError(f"id {row_id!r} does not belong to this shard", path=path, line=line, field="id")
            if row_id in rows:
                raise DataError(f"duplicate id {row_id!r}", path=path, line=line, field="id")
            rows[row_id] = (path, offset)
        have = len(expected & rows.keys())
        if have < len(expected):
            problems.append(f"{path.name} has {have} of {len(expected)} prompts (rerun its generate command)")
    return rows, problems
