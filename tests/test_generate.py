"""The generate stage and the HF sampler: order, seeding, sharding, resuming after SIGKILL, merging, errors."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import cli_process
import pytest

from selfplay.errors import UserError

QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Tom has 3 apples and buys 4 more. How many apples does he have?",
             "Write a short poem about the sea and the sky.", "What is 12 times 5?", "Say hi."]


def write_sft(path: Path, count: int) -> Path:
    """Canonical SFT JSONL with prompts of varied length (so length-sorting reorders them)."""
    with path.open("w") as f:
        for i in range(count):
            question = QUESTIONS[i % len(QUESTIONS)] + " please" * (i % 4)
            f.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": question}],
                                "reference": f"answer {i}", "meta": {"i": i}}) + "\n")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny-model ops are microseconds: a second OpenMP thread only adds spin-waiting (badly so on a busy CPU)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    from selfplay.models import load_model

    return load_model(str(tiny_model), dtype="float32")  # exact comparisons: not the machine's auto dtype


# --------------------------------------------------------------------------- prompt formats


def test_prompt_formats(loaded) -> None:
    from selfplay.core.samplers import format_prompt

    _, tok = loaded
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "What is 2+2?"}]
    chat = format_prompt(tok, turns, "chat")
    assert chat.startswith("<|im_start|>user\nHi<|im_end|>") and chat.endswith("<|im_start|>assistant\n")
    spin = format_prompt(tok, turns, "spin-instruct")
    assert spin == "### Instruction: User: Hi\n\nAssistant: Hello!\n\nWhat is 2+2?\n\n### Response: "
    assert format_prompt(tok, turns[-1:], "spin-instruct") == "### Instruction: What is 2+2?\n\n### Response: "
    with pytest.raises(UserError, match="spin-instruct"):
        format_prompt(tok, turns, "spin_instruct")


# --------------------------------------------------------------------------- the HF sampler


def test_sampler_order_shape_and_per_sample_seeds(loaded) -> None:
    """Length-sorted batches write back in input order; a sample does not depend on its batch."""
    from selfplay.core.samplers import HFSampler, format_prompt

    model, tok = loaded
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=7, progress=False)
    seen: dict[int, list[str]] = {}
    batched = HFSampler.from_loaded(model, tok, batch_size=4).generate(
        prompts, on_result=lambda i, texts: seen.setdefault(i, texts), **kw)
    assert len(batched) == len(prompts) and all(len(s) == 3 for s in batched)
    assert seen == dict(enumerate(batched))
    alone = HFSampler.from_loaded(model, tok, batch_size=1)
    for prompt, samples in zip(prompts, batched):
        assert alone.generate([prompt], **kw) == [samples]
    assert len({s for samples in batched for s in samples}) > len(prompts)  # samples differ
    assert HFSampler.from_loaded(model, tok).generate(prompts, **{**kw, "seed": 8}) != batched


def test_stop_sequences_cut_samples_and_say_why(loaded) -> None:
    """A stop text ends a sample (and is not part of it); samples it never occurs in are unchanged."""
    from selfplay.core.samplers import HFSampler, format_prompt

    model, tok = loaded
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    sampler = HFSampler.from_loaded(model, tok, batch_size=3)
    kw = dict(n=2, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=3, progress=False)
    free = sampler.complete(prompts, **kw)
    assert {c.finish_reason for cs in free for c in cs} <= {"eos", "length"}
    assert all(c.num_tokens <= 12 for cs in free for c in cs)
    text = next(c.text for cs in free for c in cs if len(c.text) > 6 and c.text[2:5].isascii() and c.text[2:5].strip())
    stop = text[2:5]
    cut = sampler.complete(prompts, stop=[stop], **kw)
    hits = 0
    for cs_free, cs_cut in zip(free, cut):
        for f, c in zip(cs_free, cs_cut):
            if stop in f.text:
                hits += 1
                assert c.text == f.text[:f.text.index(stop)] and c.finish_reason == "stop"
            else:
                assert c == f
    assert hits >= 1
    assert sampler.generate(prompts, stop=[stop], **kw) == [[c.text for c in cs] for cs in cut]


def test_greedy_matches_transformers_generate(loaded) -> None:
    """The hand-written decode loop (row dropping, cache trimming) equals model.generate greedily."""
    import torch

    from selfplay.core.samplers import HFSampler, format_prompt

    model, tok = loaded
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    ours = HFSampler.from_loaded(model, tok, batch_size=3).generate(
        prompts, n=2, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0, progress=False)
    assert all(a == b for a, b in ours)  # greedy: the n copies are equal
    for prompt, (answer, _) in zip(prompts, ours):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=12)
        assert answer == tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_continuous_batching_with_rows_ending_early(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows end at different steps (a fifth of the vocabulary counts as EOS here), so finished rows leave
    the batch and waiting prompts join it; neither changes any sample, and greedy still equals generate."""
    import torch

    from selfplay.core import decoding
    from selfplay.core.samplers import HFSampler, format_prompt

    model, tok = loaded
    stop_ids = set(range(0, len(tok), 5)) | {tok.eos_token_id}
    extends = []
    real_extend = decoding.Batch.extend
    monkeypatch.setattr(decoding.Batch, "extend", lambda self, other: extends.append(1) or real_extend(self, other))
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS * 2]
    batched, alone = HFSampler.from_loaded(model, tok, batch_size=3), HFSampler.from_loaded(model, tok, batch_size=1)
    batched.eos_ids = alone.eos_ids = stop_ids
    kw = dict(n=2, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=3, progress=False)
    out = batched.generate(prompts, **kw)
    assert extends, "no prompt joined a running batch"
    assert len({len(tok(s, add_special_tokens=False)["input_ids"]) for samples in out for s in samples}) > 3
    assert [alone.generate([p], **kw)[0] for p in prompts] == out

    greedy = batched.generate(prompts, **{**kw, "temperature": 0.0})
    for prompt, (answer, _) in zip(prompts, greedy):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**enc, do_sample=False, max_new_tokens=10, eos_token_id=sorted(stop_ids))[0]
        new = ids[enc["input_ids"].shape[1]:].tolist()
        cut = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
        assert answer == tok.decode(new[:cut], skip_special_tokens=True)


def test_batch_surgery_keeps_each_rows_logits(loaded) -> None:
    """Dropping rows (with left-padding trimmed) and admitting a prompt into a running batch leave every
    row's next-token logits as if the row were decoded alone."""
    import torch

    from selfplay.core.decoding import prefill

    model, tok = loaded
    ids = [tok(q, add_special_tokens=False)["input_ids"] for q in (QUESTIONS[3], QUESTIONS[1], QUESTIONS[2])]
    steps = [torch.tensor([5, 9]), torch.tensor([7, 11])]

    def alone(prompt: int, tokens: list[int]) -> torch.Tensor:
        batch = prefill(model, ids, [prompt], 1, tok.pad_token_id, lambda i, j: 0)
        for t in tokens:
            batch.step(model, torch.tensor([t]))
        return batch.logits[0]

    with torch.inference_mode():
        batch = prefill(model, ids, [0, 1], 1, tok.pad_token_id, lambda i, j: 0)
        for tokens in steps:
            batch.step(model, tokens)
        batch.keep([1])  # the long prompt 0 leaves: the shorter prompt 1's padding columns are cut
        assert batch.mask.shape[1] == len(ids[1]) + 2 and bool(batch.mask.all())
        batch.extend(prefill(model, ids, [2], 1, tok.pad_token_id, lambda i, j: 0))
        batch.step(model, torch.tensor([13, 17]))
        torch.testing.assert_close(batch.logits[0], alone(1, [9, 11, 13]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.logits[1], alone(2, [17]), atol=1e-5, rtol=1e-4)


def test_cpu_sampler_keeps_the_models_answers(loaded, tiny_model: Path) -> None:
    """make_sampler's CPU setup (grouped attention, in-place KV cache) decodes what the plain model does."""
    from selfplay.core.samplers import HFSampler, format_prompt, make_sampler

    model, tok = loaded
    from selfplay.config import ModelConfig

    fast = make_sampler("hf", str(tiny_model), model_cfg=ModelConfig(dtype="float32"), batch_size=4, device="cpu")
    assert fast.model.config._attn_implementation == "selfplay_grouped"
    prompts = [format_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    kw = dict(n=2, temperature=0.9, top_p=0.95, max_new_tokens=8, seed=5, progress=False)
    assert fast.generate(prompts, **kw) == HFSampler.from_loaded(model, tok, batch_size=4).generate(prompts, **kw)


def test_next_tokens_follows_the_distribution() -> None:
    import torch

    from selfplay.core.decoding import next_tokens

    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = probs.log().expand(8000, 4).contiguous()
    rngs = [random.Random(i) for i in range(8000)]
    counts = torch.bincount(next_tokens(logits, 1.0, 1.0, rngs), minlength=4).float() / 8000
    assert torch.allclose(counts, probs, atol=0.03)
    # top_p 0.5 keeps {0, 1}: the smallest set of most likely tokens reaching 0.5 of the mass.
    rngs = [random.Random(i) for i in range(8000)]
    counts = torch.bincount(next_tokens(logits, 1.0, 0.5, rngs), minlength=4).float() / 8000
    assert torch.allclose(counts, torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.03)
    assert next_tokens(logits[:2], 0.0, 1.0, rngs[:2]).tolist() == [0, 0]


def test_top_p_beyond_the_candidate_shortlist_is_exact() -> None:
    """A flat distribution whose nucleus exceeds the top-k shortlist falls back to the full sort."""
    import torch

    from selfplay.core.decoding import TOP_P_CANDIDATES, next_tokens

    vocab = 4 * TOP_P_CANDIDATES
    logits = -torch.arange(vocab, dtype=torch.float32)[None].expand(2000, vocab) / vocab  # token i: p ~ e^(-i/V)
    probs = torch.softmax(logits[0], -1)
    cutoff = int(((probs.cumsum(-1) - probs) < 0.9).sum())  # tokens 0..cutoff-1 form the nucleus
    assert cutoff > TOP_P_CANDIDATES
    picked = next_tokens(logits, 1.0, 0.9, [random.Random(i) for i in range(2000)])
    assert int(picked.max()) < cutoff and int(picked.max()) > TOP_P_CANDIDATES


# --------------------------------------------------------------------------- the CLI and stage


def gen_args(tiny_model: Path, data: Path, out: Path, *extra: object) -> list[object]:
    return ["generate", "--model", tiny_model, "--data", data, "--out", out, "--n", 2, "--max-new-tokens", 4,
            "--temperature", 0.8, "--batch-size", 3, *extra]


def test_cli_writes_sample_sets(cli, tiny_model: Path, tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 5)
    result = cli(gen_args(tiny_model, data, tmp_path / "gen", "--prompt-format", "spin-instruct"))
    assert result.exit_code == 0, result.output
    rows = read_lines(tmp_path / "gen" / "shard-00000-of-00001.jsonl")
    assert sorted(r["id"] for r in rows) == [f"q{i}" for i in range(5)]
    row = rows[0]
    assert set(row) == {"id", "prompt_messages", "reference", "samples", "finish_reasons", "sampler", "meta"}
    assert len(row["samples"]) == 2 and row["reference"] == f"answer {row['id'][1:]}"
    assert set(row["finish_reasons"]) <= {"eos", "length"} and len(row["finish_reasons"]) == 2
    assert row["sampler"] == {"backend": "hf", "model": str(tiny_model), "temperature": 0.8, "top_p": 1.0,
                              "max_new_tokens": 4, "seed": 0, "n": 2, "prompt_format": "spin-instruct"}
    assert "prompt_format: spin-instruct" in (tmp_path / "gen" / "config.yaml").read_text()
    assert "decode steps by the lean CPU step" in result.output  # a Llama on CPU: core/fast_decode.py
    merged = cli(["generate", "merge", tmp_path / "gen"])
    assert merged.exit_code == 0
    assert [r["id"] for r in read_lines(tmp_path / "gen.jsonl")] == [f"q{i}" for i in range(5)]


@pytest.mark.parametrize("shard_flags", [
    [["--num-fracs", 3, "--data-frac", k] for k in range(3)],
    [["--frac-len", 4, "--data-frac", k] for k in range(3)],  # 10 prompts: slices of 4, 4, 2
], ids=["num-fracs", "frac-len"])
def test_shards_union_equals_unsharded(cli, tiny_model: Path, tmp_path: Path, shard_flags) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 10)
    assert cli(gen_args(tiny_model, data, tmp_path / "full")).exit_code == 0
    shard_ids = []
    for flags in shard_flags:
        result = cli(gen_args(tiny_model, data, tmp_path / "sharded", *flags))
        assert result.exit_code == 0, result.output
        k = flags[-1]
        shard_ids.append({r["id"] for r in read_lines(tmp_path / "sharded" / f"shard-0000{k}-of-00003.jsonl")})
    assert sum(len(s) for s in shard_ids) == 10 and set().union(*shard_ids) == {f"q{i}" for i in range(10)}
    if shard_flags[0][0] == "--frac-len":
        assert [len(s) for s in shard_ids] == [4, 4, 2]
    assert cli(["generate", "merge", tmp_path / "full"]).exit_code == 0
    assert cli(["generate", "merge", tmp_path / "sharded", "--out", tmp_path / "m.jsonl"]).exit_code == 0
    # Per-sample seeds: sharding changes neither the order after merging nor the samples themselves.
    assert read_lines(tmp_path / "m.jsonl") == read_lines(tmp_path / "full.jsonl")


def test_resume_after_sigkill(cli, tiny_model: Path, tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 60)
    out = tmp_path / "gen"
    shard = out / "shard-00000-of-00001.jsonl"
    args = [str(a) for a in gen_args(tiny_model, data, out, "--batch-size", 1, "--max-new-tokens", 48)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = cli_process.CLIProcess(args, env, capture=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if shard.is_file() and shard.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = {r["id"] for r in read_lines(shard) if r}
    assert 3 <= len(done_before) < 60
    with shard.open("a") as f:
        f.write('{"id": "q39", "prompt_mess')  # what a kill mid-write leaves: a torn last line
    # The batch size is not a sampler setting (samples are seeded per prompt), so the rerun may batch more.
    rerun = [*args, "--batch-size", "16"]
    result = cli(rerun)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    ids = [r["id"] for r in read_lines(shard)]
    assert len(ids) == len(set(ids)) == 60 and done_before <= set(ids)
    assert cli(rerun).exit_code == 0 and [r["id"] for r in read_lines(shard)] == ids  # nothing redone


def test_merge_reports_missing_incomplete_and_duplicates(cli, tiny_model: Path, tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 9)
    out = tmp_path / "gen"
    for k in (0, 2):
        assert cli(gen_args(tiny_model, data, out, "--num-fracs", 3, "--data-frac", k)).exit_code == 0
    result = cli(["generate", "merge", out])
    assert result.exit_code == 2 and "shard-00001-of-00003.jsonl is missing" in result.stderr
    assert cli(gen_args(tiny_model, data, out, "--num-fracs", 3, "--data-frac", 1)).exit_code == 0
    shard = out / "shard-00002-of-00003.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:1]))
    result = cli(["generate", "merge", out])
    assert result.exit_code == 2 and "shard-00002-of-00003.jsonl has 1 of 3 prompts" in result.stderr
    shard.write_text("".join(lines + lines[:1]))
    result = cli(["generate", "merge", out])
    assert result.exit_code == 2 and "duplicate id" in result.stderr and "line 4" in result.stderr
    result = cli(["generate", "merge", tmp_path])
    assert result.exit_code == 2 and "not a generate output directory" in result.stderr


def test_bad_inputs_are_user_errors(cli, tiny_model: Path, tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", 4)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "not-prepared").mkdir()
    (tmp_path / "not-prepared" / "notes.txt").write_text("hi")
    cases = [
        (["generate", "--model", tmp_path / "nope", "--data", data, "--out", tmp_path / "o1"], "does not exist"),
        (gen_args(tiny_model, tmp_path / "empty.jsonl", tmp_path / "o2"), "empty"),
        (gen_args(tiny_model, tmp_path / "not-prepared", tmp_path / "o3"), "no 'train' split"),
        (gen_args(tiny_model, data, tmp_path / "o4", "--data-frac", 1), "--num-fracs"),
        (gen_args(tiny_model, data, tmp_path / "o5", "--data-frac", 3, "--num-fracs", 3), "0..2"),
        (gen_args(tiny_model, data, tmp_path / "o6", "--data-frac", 2, "--frac-len", 2), "past the end"),
        (gen_args(tiny_model, data, tmp_path / "o7", "--prompt-format", "vicuna"), "prompt_format"),
        (["generate", "--model", tiny_model, "--data", data], "--out is required"),
    ]
    for args, message in cases:
        result = cli(args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert cli(gen_args(tiny_model, data, tmp_path / "o8")).exit_code == 0
    result = cli(gen_args(tiny_model, data, tmp_path / "o8", "--temperature", 0.3))
    assert result.exit_code == 2 and "refusing to mix" in result.stderr and "new --out" in result.stderr


def test_python_api_ids_and_prepared_dir(tiny_model: Path, tmp_path: Path, shared_data: Path) -> None:
    """The loop's entry points on a prepared directory of real GSM8K rows, restricted to some ids."""
    from selfplay.config import load_config
    from selfplay.data.records import load_sft, prepare_source
    from selfplay.stages.generate import run_generate
    from selfplay.stages.shards import merge_shards

    prepared = prepare_source(str(shared_data / "gsm8k" / "test_200.jsonl"), tmp_path / "prep", num=6,
                              show_progress=False)
    ids = [r["id"] for r in load_sft(prepared)][::-2]
    cfg = load_config(flags={"generate.n": 2, "generate.max_new_tokens": 3})
    shard = run_generate(cfg, str(tiny_model), prepared, tmp_path / "gen", ids=ids)
    assert shard.name == "shard-00000-of-00001.jsonl"
    merged = read_lines(merge_shards(tmp_path / "gen"))
    assert [r["id"] for r in merged] == ids and all("####" in r["reference"] for r in merged)


def test_unset_batch_size_defaults_by_device_and_sampling_dtype(tiny_model: Path) -> None:
    """64 prompts at once on a CPU in bf16, 32 in fp32 (the faster size in each on the machines measured),
    256 on a GPU; the sampler a stage builds with ``generate.batch_size`` unset takes its model's dtype's."""
    import torch

    from selfplay.config import ModelConfig
    from selfplay.core.samplers import batch_size_for, default_batch_size, make_sampler

    assert default_batch_size("cpu", torch.bfloat16) == default_batch_size("cpu", "bfloat16") == 64
    assert default_batch_size("cpu", torch.float32) == default_batch_size("cpu", "float32") == 32
    assert default_batch_size("cpu") == 64  # dtype unknown: only sizes a stage's chunks of work
    assert batch_size_for(5, "cpu", torch.float32) == 5
    if torch.cuda.is_available():
        assert default_batch_size("cuda", torch.float32) == 256
    sampler = make_sampler("hf", str(tiny_model), model_cfg=ModelConfig(dtype="float32"), device="cpu")
    assert sampler.batch_size == 32
