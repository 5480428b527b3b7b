"""``selfplay rank`` through the real CLI: verifier judge on GSM8K prompts, matrices, resume, shards, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from selfplay.io import read_jsonl, write_jsonl
from selfplay.methods.sppo import build_sppo_pairs

K_CYCLE = [2, 3, 5, 8]


def final_answer(solution: str) -> int:
    return int(solution.split("####")[-1].strip().replace(",", ""))


@pytest.fixture
def gsm8k_samples(shared_data: Path, tmp_path: Path) -> Path:
    """Sample sets for 8 GSM8K test prompts: the reference solution among K−1 wrong answers (K = 2, 3, 5, 8);
    the last prompt has only wrong answers (nothing to prefer)."""
    rows = []
    with (shared_data / "gsm8k" / "test_200.jsonl").open() as f:
        problems = [json.loads(line) for _, line in zip(range(8), f)]
    for n, problem in enumerate(problems):
        k = K_CYCLE[n % 4]
        answer = final_answer(problem["answer"])
        wrong = [f"Let me think. The result is {answer + d}.\n#### {answer + d}" for d in range(1, k)]
        samples = wrong if n == 7 else wrong[: n % k] + [problem["answer"]] + wrong[n % k:]
        rows.append({"id": f"gsm8k-test-{n}", "prompt_messages": [{"role": "user", "content": problem["question"]}],
                     "reference": problem["answer"], "samples": samples[:k],
                     "sampler": {"temperature": 0.7, "top_p": 0.9}})
    path = tmp_path / "generate.jsonl"
    write_jsonl(path, rows)
    return path


def check_records(records: list[dict], samples_path: Path) -> None:
    by_id = {r["id"]: r for r in read_jsonl(samples_path)}
    assert sorted(r["id"] for r in records) == sorted(by_id)
    for record in records:
        source = by_id[record["id"]]
        k = len(source["samples"])
        assert record["samples"] == source["samples"] and record["reference"] == source["reference"]
        assert record["judge"] == "verifier:gsm8k" and record["errors"] == 0
        assert record["win_matrix_kind"] == "prob"
        expected = [1.0 if final_answer(s) == final_answer(source["reference"]) else 0.0 for s in source["samples"]]
        assert record["scores"] == expected
        p = record["win_matrix"]
        assert len(p) == k and all(len(row) == k for row in p)
        for i in range(k):
            assert p[i][i] == pytest.approx(0.5)
            for j in range(k):
                assert p[i][j] + p[j][i] == pytest.approx(1.0)
                if expected[i] > expected[j]:
                    assert p[i][j] == pytest.approx(0.7310585786300049)  # sigmoid(1 − 0)


def test_rank_with_verifier_writes_a_matrix_per_prompt(cli, gsm8k_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "rank.jsonl"
    result = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out, "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    check_records(records, gsm8k_samples)
    saved = yaml.safe_load((tmp_path / "rank.config.yaml").read_text())
    assert saved["rank"]["judge"] == "verifier:gsm8k" and saved["rank"]["batch_size"] == 3

    pairs, stats = build_sppo_pairs(records)
    assert stats["pairs"] == 7 and stats["dropped_all_equal"] == 1
    references = {r["id"]: r["reference"] for r in records}
    assert all(p["chosen"] == references[p["id"]] and p["rejected"] != p["chosen"] for p in pairs)
    assert all(p["chosen_prob"] > 0.5 > p["rejected_prob"] for p in pairs)


def test_rank_resumes_after_a_kill(cli, gsm8k_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "rank.jsonl"
    assert cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out]).exit_code == 0
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])  # three whole records and a torn fourth, as after SIGKILL
    result = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out])
    assert result.exit_code == 0, result.output
    assert "ranked 5 prompts" in result.output and "3 already done" in result.output
    assert out.read_text() == complete  # nothing lost, nothing duplicated
    again = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out])
    assert "ranked 0 prompts" in again.output and out.read_text() == complete


def test_rank_refuses_to_mix_judges_in_one_file(cli, gsm8k_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "rank.jsonl"
    assert cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out]).exit_code == 0
    result = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:em", "--out", out])
    assert result.exit_code == 2 and "holds results of judge 'verifier:gsm8k'" in result.stderr


def test_rank_shards_cover_all_prompts(cli, gsm8k_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "ranked"
    for frac in range(3):
        result = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out,
                      "--data-frac", frac, "--num-fracs", 3])
        assert result.exit_code == 0, result.output
    shards = sorted(out.glob("shard-*.jsonl"))
    assert [s.name for s in shards] == [f"shard-0000{i}-of-00003.jsonl" for i in range(3)]
    assert [len(read_jsonl(s)) for s in shards] == [3, 3, 2]
    check_records([r for s in shards for r in read_jsonl(s)], gsm8k_samples)
    assert (out / "config.yaml").is_file()


def test_rank_judge_from_config_and_set(cli, gsm8k_samples: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rank:\n  judge: verifier:em\n")
    out = tmp_path / "r.jsonl"
    result = cli(["rank", "--data", gsm8k_samples, "--out", out, "--config", cfg, "--set", "rank.judge=verifier:gsm8k"])
    assert result.exit_code == 0, result.output
    assert {r["judge"] for r in read_jsonl(out)} == {"verifier:gsm8k"}


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"id": "a", "prompt_messages": [{"role": "user", "content": "q"}], "samples": ["#### 1"], "reference": "#### 1"},
         "line 2, field 'samples': ranking needs at least 2 samples"),
        ({"id": "a", "prompt_messages": [{"role": "user", "content": "q"}], "samples": ["#### 1", "#### 2"]},
         "line 2, field 'reference'"),
        ({"id": "a", "prompt_messages": "q", "samples": ["#### 1", "#### 2"], "reference": "#### 1"},
         "line 2, field 'prompt_messages'"),
        ({"id": "first", "prompt_messages": [{"role": "user", "content": "q"}], "samples": ["1", "2"], "reference": "1"},
         "line 2, field 'id': duplicate id 'first'"),
    ],
)
def test_bad_sample_sets_name_file_line_and_field(cli, tmp_path: Path, row: dict, needle: str) -> None:
    good = {"id": "first", "prompt_messages": [{"role": "user", "content": "q"}], "samples": ["#### 1", "#### 2"],
            "reference": "#### 1"}
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, [good, row])
    result = cli(["rank", "--data", data, "--judge", "verifier:gsm8k", "--out", tmp_path / "r.jsonl"])
    assert result.exit_code == 2
    assert str(data) in result.stderr and needle in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_rank_user_errors(cli, gsm8k_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    unknown = cli(["rank", "--data", gsm8k_samples, "--judge", "verifer:gsm8k", "--out", out])
    assert unknown.exit_code == 2 and "Did you mean 'verifier'" in unknown.stderr
    half_shard = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out, "--data-frac", 1])
    assert half_shard.exit_code == 2 and "go together" in half_shard.stderr
    bad_shard = cli(["rank", "--data", gsm8k_samples, "--judge", "verifier:gsm8k", "--out", out,
                     "--data-frac", 4, "--num-fracs", 4])
    assert bad_shard.exit_code == 2 and "--data-frac must be in 0..3" in bad_shard.stderr
    missing = cli(["rank", "--data", tmp_path / "nope.jsonl", "--judge", "verifier:gsm8k", "--out", out])
    assert missing.exit_code == 2 and "file not found" in missing.stderr


def test_rank_merges_a_generate_directory_first(cli, gsm8k_samples: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    gen_dir = tmp_path / "generate"
    gen_dir.mkdir()
    rows = read_jsonl(gsm8k_samples)
    write_jsonl(gen_dir / "shard-00000-of-00002.jsonl", rows[:5])
    write_jsonl(gen_dir / "shard-00001-of-00002.jsonl", rows[5:])
    merged: list[Path] = []

    def merge_shards(out_dir: Path, dest: Path | None = None) -> Path:  # stands in for the generate stage's
        dest = dest or out_dir.with_suffix(".jsonl")
        write_jsonl(dest, [r for shard in sorted(out_dir.glob("shard-*.jsonl")) for r in read_jsonl(shard)])
        merged.append(out_dir)
        return dest

    from selfplay.stages import rank, shards

    monkeypatch.setattr(shards, "merge_shards", merge_shards)
    monkeypatch.setattr(rank, "merge_shards", merge_shards)  # imported by name: a worker may have loaded it first
    out = tmp_path / "rank.jsonl"
    result = cli(["rank", "--data", gen_dir, "--judge", "verifier:gsm8k", "--out", out])
    assert result.exit_code == 0, result.output
    assert merged == [gen_dir]
    check_records(read_jsonl(out), gsm8k_samples)
