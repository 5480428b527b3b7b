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
