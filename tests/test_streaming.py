"""Stages that read and write records as streams: memory that does not grow with the number of prompts.

Python's own allocations are traced (``tracemalloc``) while a stage runs in this process: a stage that held
its records would allocate several times the size of its input; a streaming one holds the ids and a batch.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from selfplay.io import read_jsonl, write_jsonl


def _ultrachat(path: Path, rows: int) -> Path:
    from bench.stream_bench import make_ultrachat

    return make_ultrachat(path, rows)


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("options", [{}, {"num": 2900, "test_size": 0.1}], ids=["all rows", "num + test split"])
def test_data_prepare_holds_no_records(tmp_path: Path, options: dict) -> None:
    from selfplay.data.records import prepare_source

    source = _ultrachat(tmp_path / "u.jsonl", 3000)
    size_mib = source.stat().st_size / 2**20  # ~4 MiB; held as Python objects it would be ~5x that
    peak = _peak_mib(lambda: prepare_source(str(source), tmp_path / "out", show_progress=False, **options))
    assert peak < size_mib / 2, f"data prepare allocated {peak:.1f} MiB for a {size_mib:.1f} MiB source"
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    if options:
        assert meta["counts"] == {"train": 2610, "test": 290} == {"train": len(train),
                                                                   "test": len(read_jsonl(tmp_path / "out" / "test.jsonl"))}
    else:
        assert meta["counts"] == {"train": 3000} and len(train) == 3000
    assert not list((tmp_path / "out").glob(".*"))  # the spool is gone


def test_streamed_prepare_splits_as_before(tmp_path: Path) -> None:
    """The same rows in train/test as choosing them from a list (the selection by seed is unchanged)."""
    import random

    from selfplay.data.records import prepare_source

    source = _ultrachat(tmp_path / "u.jsonl", 50)
    prepare_source(str(source), tmp_path / "out", num=40, test_size=8, seed=3, show_progress=False)
    order = list(range(50))
    random.Random(3).shuffle(order)
    chosen = order[:40]
    expected_test, expected_train = sorted(chosen[:8]), sorted(chosen[8:])
    ids = [json.loads(line)["prompt_id"] for line in source.read_text().splitlines()]
    train = [r["id"].split("-")[0] for r in read_jsonl(tmp_path / "out" / "train.jsonl")]
    test = [r["id"].split("-")[0] for r in read_jsonl(tmp_path / "out" / "test.jsonl")]
    assert train == [ids[i] for i in expected_train] and test == [ids[i] for i in expected_test]


def test_rank_holds_no_sample_sets(tmp_path: Path) -> None:
    from selfplay.methods import load_config
    from selfplay.stages.rank import run_rank

    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"id": f"p{i}", "prompt_messages": [{"role": "user", "content": f"question {i} " * 20}],
                           "reference": f"answer {i} " * 30, "samples": [f"answer {i} " * 25, f"other {i} " * 25]}
                          for i in range(3000)])
    size_mib = samples.stat().st_size / 2**20
    cfg = load_config(flags={"rank.judge": "verifier:f1", "rank.batch_size": 16})
    peak = _peak_mib(lambda: run_rank(cfg, samples, tmp_path / "rank.jsonl"))
    assert peak < size_mib / 2, f"rank allocated {peak:.1f} MiB for {size_mib:.1f} MiB of sample sets"
    ranked = read_jsonl(tmp_path / "rank.jsonl")
    assert [r["id"] for r in ranked] == [f"p{i}" for i in range(3000)]


def test_generate_in_chunks_draws_the_same_samples(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """The generate stage hands the sampler a chunk of prompts at a time; per-sample seeds make that
    invisible in the records (fp32: equal; only the order prompts finish in, which the merge undoes, differs)."""
    import selfplay.stages.generate as generate
    from selfplay.methods import load_config

    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                        "reference": str(2 * i)} for i in range(11)])
    cfg = load_config(flags={"generate.n": 2, "generate.max_new_tokens": 6, "generate.batch_size": 2,
                             "model.dtype": "float32"})
    whole = generate.run_generate(cfg, str(tiny_model), data, tmp_path / "whole")
    monkeypatch.setattr(generate, "SAMPLE_CHUNK_MIN", 3)
    monkeypatch.setattr(generate, "SAMPLE_CHUNK_BATCHES", 1)
    chunked = generate.run_generate(cfg, str(tiny_model), data, tmp_path / "chunked")
    by_id = [{r["id"]: r for r in read_jsonl(path)} for path in (whole, chunked)]
    assert by_id[0] == by_id[1] and len(by_id[0]) == 11


def test_shard_merges_hold_offsets_not_records(tmp_path: Path) -> None:
    """Merging generate shards (and rank shards) reads each record back by its byte offset: the merged file is
    in data order while the merge allocates far less than the records would take (holding them: ~2x the
    shards' size)."""
    from selfplay.io import write_json
    from selfplay.stages.rank import merge_rank_shards
    from selfplay.stages.shards import MANIFEST, merge_shards, shard_indices, shard_name

    n, count = 3000, 3
    ids = [f"p{i}" for i in range(n)]
    rows = {i: {"id": i, "prompt_messages": [{"role": "user", "content": f"question {i} é " * 20}],
                "samples": [f"answer {i} ✓ " * 25, f"other {i} " * 25]} for i in ids}
    out = tmp_path / "gen"
    manifest = {"prompt_ids": ids, "sharding": {"num_fracs": count}, "shuffle_seed": 7}
    write_json(out / MANIFEST, manifest)
    for k in range(count):  # each shard in completion order (reversed), as parallel decoding writes them
        write_jsonl(out / shard_name(k, count), [rows[ids[i]] for i in reversed(shard_indices(manifest, k))])
    size_mib = sum(p.stat().st_size for p in out.glob("shard-*")) / 2**20
    peak = _peak_mib(lambda: merge_shards(out))
    assert peak < size_mib / 2, f"the merge allocated {peak:.1f} MiB for {size_mib:.1f} MiB of shards"
    merged = tmp_path / "gen.jsonl"
    assert read_jsonl(merged) == [rows[i] for i in ids]

    ranked = tmp_path / "rank"  # rank shards: contiguous slices of the sample file, judged in any order
    for k, part in enumerate((ids[:1000], ids[1000:2000], ids[2000:])):
        write_jsonl(ranked / f"shard-{k:05d}-of-{count:05d}.jsonl", [{**rows[i], "scores": [1.0, 0.0]}
                                                                      for i in reversed(part)])
    peak = _peak_mib(lambda: merge_rank_shards(ranked, merged, count, tmp_path / "rank.jsonl"))
    assert peak < size_mib / 2, f"the rank merge allocated {peak:.1f} MiB for {size_mib:.1f} MiB of shards"
    assert [r["id"] for r in read_jsonl(tmp_path / "rank.jsonl")] == ids


def test_offsets_read_back_the_records_iter_jsonl_reads(tmp_path: Path) -> None:
    """iter_jsonl_offsets yields what iter_jsonl yields (blank lines skipped, a torn tail dropped when tolerated),
    with real line numbers and byte offsets that read_jsonl_at reads back — multi-byte UTF-8 included."""
    from selfplay.errors import DataError
    from selfplay.io import iter_jsonl, iter_jsonl_offsets, read_jsonl_at

    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "é1", "t": "✓"}\n\n{"id": 2}\n{"id": 3, "t', encoding="utf-8")
    found = list(iter_jsonl_offsets(path, tolerate_torn_tail=True))
    assert [obj for _, _, obj in found] == list(iter_jsonl(path, tolerate_torn_tail=True)) == [
        {"id": "é1", "t": "✓"}, {"id": 2}]
    assert [(line, offset) for line, offset, _ in found] == [(1, 0), (3, len('{"id": "é1", "t": "✓"}\n\n'.encode()))]
    assert list(read_jsonl_at([(path, offset) for _, offset, _ in reversed(found)])) == [{"id": 2},
                                                                                         {"id": "é1", "t": "✓"}]
    with pytest.raises(DataError, match="line 4"):
        list(iter_jsonl_offsets(path))
