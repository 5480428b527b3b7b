"""Every command checks its arguments and inputs before it creates any output: a refused command (exit 2,
one message) leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

from test_generate import gen_args, write_sft


def test_invalid_arguments_leave_no_output(cli, tiny_model: Path, tmp_path: Path) -> None:
    """Checked before the output directory is created: a refused command leaves nothing behind."""
    data = write_sft(tmp_path / "sft.jsonl", 4)
    no_config = tmp_path / "weights-only"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p", "prompt": [{"role": "user", "content": "hi"}], "chosen": "a",
                                 "rejected": "b"}) + "\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": "s", "prompt_messages": [{"role": "user", "content": "hi"}],
                                   "samples": ["a", "b"], "reference": "1"}) + "\n")
    cases = [
        (gen_args(tiny_model, data, tmp_path / "out", "--n", 0), "'generate.n' must be >= 1, got 0"),
        (gen_args(tiny_model, data, tmp_path / "out", "--temperature", -1), "'generate.temperature' must be >= 0"),
        (gen_args(tiny_model, data, tmp_path / "out", "--top-p", 1.5), "'generate.top_p' must be in (0, 1]"),
        (gen_args(tiny_model, data, tmp_path / "out", "--max-new-tokens", 0), "'generate.max_new_tokens' must be >= 1"),
        (gen_args(tiny_model, data, tmp_path / "out", "--batch-size", 0), "'generate.batch_size' must be >= 1"),
        (gen_args(no_config, data, tmp_path / "out"), "has no config.json"),
        (["rollout", "--model", no_config, "--data", data, "--out", tmp_path / "out", "--set", "rise.env=arith"],
         "has no config.json"),
        (["train", "--model", no_config, "--data", pairs, "--out", tmp_path / "out"], "has no config.json"),
        (["train", "--model", tiny_model, "--data", data, "--out", tmp_path / "out"], "field 'prompt'"),
        (["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "out", "--lr", -1], "'train.lr'"),
        (["rank", "--data", samples, "--judge", "bogus", "--out", tmp_path / "out"], "unknown judge 'bogus'"),
        (["eval", "task", "-m", no_config, "--task", "arith", "--data", data, "--out", tmp_path / "out"],
         "has no config.json"),
        (["eval", "winrate", "-m", tiny_model, "--baseline", tmp_path / "nope", "--prompts", data,
          "--judge", "http://127.0.0.1:9/v1", "--out", tmp_path / "out"], "does not exist"),
        (["eval", "leaderboard", "-m", tiny_model, "--limit", 2.5, "--out", tmp_path / "out"], "--limit"),
    ]
    for args, message in cases:
        result = cli(args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")], args


# Counts and sizes below their range, on every command that takes one. Python's slicing reads --limit -1 as
# "all but the last", and several of these once meant "everything" without a word (`--limit 0` in `eval
# multiturn`/`eval agent`, `--max-steps 0` or `-5` in `train`).
BAD_COUNTS = [
    (["data", "prepare", "SRC", "--out", "OUT", "--num", "-3"], "'data.num' must be >= 1, got -3"),
    (["data", "prepare", "SRC", "--out", "OUT", "--num", "0"], "'data.num' must be >= 1, got 0"),
    (["data", "prepare", "SRC", "--out", "OUT", "--test-size", "-3"], "--test-size must not be negative"),
    (["data", "prepare", "SRC", "--out", "OUT", "--test-size", "1.5"], "--test-size as a fraction must be between"),
    (["data", "synth", "arith", "--out", "OUT", "--num", "-1"], "must be at least 1, got -1"),
    (["generate", "--model", "M", "--data", "SRC", "--out", "OUT", "--n", "-2"], "'generate.n' must be >= 1"),
    (["generate", "--model", "M", "--data", "SRC", "--out", "OUT", "--data-frac", "-1", "--num-fracs", "2"],
     "'generate.data_frac' must be >= 0, got -1"),
    (["generate", "--model", "M", "--data", "SRC", "--out", "OUT", "--data-frac", "0", "--num-fracs", "0"],
     "'generate.num_fracs' must be >= 1, got 0"),
    (["generate", "--model", "M", "--data", "SRC", "--out", "OUT", "--data-frac", "0", "--frac-len", "-4"],
     "'generate.frac_len' must be >= 1, got -4"),
    (["rank", "--data", "SRC", "--out", "OUT", "--judge", "verifier:arith", "--batch-size", "-1"],
     "'rank.batch_size' must be >= 1"),
    (["rollout", "--model", "M", "--data", "SRC", "--out", "OUT", "--max-turns", "0"], "rise.max_turns"),
    (["rollout", "--model", "M", "--data", "SRC", "--out", "OUT", "--num-samples", "1,-4"], "rise.num_samples"),
    (["rollout", "agent", "--model", "M", "--data", "SRC", "--out", "OUT", "--samples", "-1",
      "--search-sources", "SRC"], "agent.samples >= 1"),
    (["train", "--model", "M", "--data", "SRC", "--out", "OUT", "--max-steps", "0"],
     "'train.max_steps' must be >= 1 (or -1: no limit), got 0"),
    (["train", "--model", "M", "--data", "SRC", "--out", "OUT", "--max-steps", "-5"], "got -5"),
    (["train", "--model", "M", "--data", "SRC", "--out", "OUT", "--epochs", "-1"], "'train.epochs' must be > 0"),
    (["loop", "--model", "M", "--data", "SRC", "--run-dir", "OUT", "--iters", "-1"], "'loop.iters' must be >= 0"),
    (["eval", "task", "-m", "M", "--data", "SRC", "--out", "OUT", "--limit", "-1"], "--limit must be >= 1, got -1"),
    (["eval", "task", "-m", "M", "--data", "SRC", "--out", "OUT", "--n", "0"], "--n must be >= 1, got 0"),
    (["eval", "task", "-m", "M", "--data", "SRC", "--out", "OUT", "--temperature", "-0.5"], "--temperature must be >= 0"),
    (["eval", "multiturn", "-m", "M", "--data", "SRC", "--out", "OUT", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["eval", "multiturn", "-m", "M", "--data", "SRC", "--out", "OUT", "--turns", "0"], "rise.max_turns and rise.eval_turns"),
    (["eval", "agent", "-m", "M", "--data", "SRC", "--out", "OUT", "--limit", "-2"], "--limit must be >= 1, got -2"),
    (["eval", "mt-bench", "-m", "M", "--out", "OUT", "--limit", "-1"], "--limit must be >= 1, got -1"),
    (["eval", "mt-bench", "-m", "M", "--out", "OUT", "--judge-max-tokens", "0"], "--judge-max-tokens must be >= 1"),
    (["eval", "winrate", "-m", "M", "--baseline", "B", "--prompts", "SRC", "--judge", "J", "--out", "OUT",
      "--limit", "-1"], "--limit must be >= 1, got -1"),
    (["eval", "winrate", "-m", "M", "--baseline", "B", "--prompts", "SRC", "--judge", "J", "--out", "OUT",
      "--bootstrap", "-1"], "--bootstrap must be >= 1"),
    (["eval", "leaderboard", "-m", "M", "--out", "OUT", "--limit", "-0.5"], "--limit must be > 0, got -0.5"),
    (["eval", "leaderboard", "-m", "M", "--out", "OUT", "--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
    (["serve", "--model", "M", "--port", "-1"], "--port must be in 0..65535, got -1"),  # serve's own checks
    (["serve", "--model", "M", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["serve", "--model", "M", "--max-tokens", "-8"], "--max-tokens must be at least 1"),
    (["serve", "--model", "M", "--max-connections", "0"], "--max-connections must be at least 1"),
    (["config", "show", "--set", "remote.timeout=0"], "'remote.timeout' must be > 0"),
    (["config", "show", "--set", "remote.max_retries=-1"], "'remote.max_retries' must be >= 0"),
    (["config", "show", "--set", "launch.heartbeat_timeout=-1"], "'launch.heartbeat_timeout' must be > 0"),
]


def test_negative_or_zero_counts_are_refused_everywhere(cli, tiny_model: Path, tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 4)
    for args, message in BAD_COUNTS:
        args = [{"SRC": data, "M": tiny_model, "OUT": tmp_path / "out", "B": data, "J": "http://127.0.0.1:9/v1"}
                .get(a, a) for a in args]
        result = cli(args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("Error:") == 1 and "Traceback" not in result.stderr, (args, result.stderr)
        assert not (tmp_path / "out").exists(), args
