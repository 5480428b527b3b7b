"""The generation benchmark's arms on the tiny model: the same prompts give token counts on the same rule
(generated tokens up to and including EOS), and an arm that cannot run reports why instead of raising."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gen_arms import (Guarded, compile_forward, compiled_static_generate, compiled_static_warmup,
                            count_until_eos, describe_failure, first_failure, hf_continuous_config,
                            hf_continuous_generate, recipe_batch_shapes, spin_recipe_generate)
from bench.gen_bench import load_spin_recipe_model

SETTINGS = {"temperature": 1.0, "top_p": 1.0}
QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 12 times 5?"]


@pytest.fixture(scope="module")
def recipe_model(tiny_model: Path):
    import torch

    torch.manual_seed(0)
    model, tokenizer = load_spin_recipe_model(str(tiny_model), torch.float32)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in QUESTIONS]
    return model, tokenizer, prompts


def test_count_until_eos_and_failure_reasons() -> None:
    assert count_until_eos([[5, 2, 9], [5, 6, 7], [2, 2]], {2}) == 2 + 3 + 1
    assert describe_failure(RuntimeError("no compiler\ndetails")) == "RuntimeError: no compiler"
    assert first_failure(lambda: 1) is None
    assert first_failure(lambda: 1 / 0).startswith("ZeroDivisionError")

    def broken(rep: int) -> dict[str, float]:
        raise OSError("gone")

    arm = Guarded(broken)
    assert arm(0) == {} and arm.reason == "OSError: gone" and arm(1) == {}


def test_hf_continuous_config_caps_rows() -> None:
    cb = hf_continuous_config([100, 300], batch_size=16, max_new_tokens=128, seed=3)
    assert cb.max_requests_per_batch == 16 and cb.seed == 3 and cb.max_batch_tokens == 16 * 300
    assert cb.num_blocks * cb.page_size * 0.85 >= 16 * (300 + 128)


def _arms(model, tokenizer, prompts, new_tokens: int) -> dict[str, dict[str, float]]:
    runs = {
        "spin_recipe": spin_recipe_generate(model, tokenizer, prompts, batch_size=16, max_new_tokens=new_tokens,
                                            seed=1, **SETTINGS),
        "hf_continuous": hf_continuous_generate(model, tokenizer, prompts, batch_size=16, max_new_tokens=new_tokens,
                                                seed=1, **SETTINGS),
    }
    return runs


def test_arms_count_tokens_the_same_way(recipe_model) -> None:
    model, tokenizer, prompts = recipe_model
    for name, r in _arms(model, tokenizer, prompts, 4).items():
        assert 2 <= r["tokens"] <= 2 * 4, name  # at least one token per row, at most max_new_tokens
        assert r["seconds"] > 0, name
        if name == "hf_continuous":
            assert 0 < r["seconds_to_last_token"] <= r["seconds"]

    # Every token ends a row: each arm counts exactly the first token of each row, EOS included.
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = list(range(len(tokenizer)))
    try:
        runs = _arms(model, tokenizer, prompts, 4)
    finally:
        model.generation_config.eos_token_id = eos
    assert {name: r["tokens"] for name, r in runs.items()} == {"spin_recipe": 2.0, "hf_continuous": 2.0}
    assert runs["spin_recipe"]["row_steps"] == 2.0  # generate stops when every row has ended


def test_compiled_static_runs_or_reports(recipe_model, tmp_path: Path) -> None:
    """The compiled arm on a one-layer model: compiles in the warm-up, then recompiles nothing; where
    torch.compile cannot work here, the warm-up's failure becomes a reason string. Dynamo's eager backend: its
    tracing and guards decide graphs and recompiles; inductor's C++ code generation (most of a cold cache's
    30 s here) is left to `make bench`."""
    import torch

    from selfplay.testing import build_tiny_llama

    _, tokenizer, prompts = recipe_model
    static_model, _ = load_spin_recipe_model(str(build_tiny_llama(tmp_path / "one-layer", layers=1)), torch.float32)
    max_cache_len = max(length for _, length in recipe_batch_shapes(tokenizer, prompts, 16)) + 4

    def warm_up() -> None:
        compile_forward(static_model, backend="eager")
        compiled_static_warmup(static_model, tokenizer, prompts, batch_size=16, max_cache_len=max_cache_len,
                               **SETTINGS)

    reason = first_failure(warm_up)
    if reason is not None:
        assert isinstance(reason, str) and reason
        pytest.skip(f"compiled_static cannot run here: {reason}")
    r = compiled_static_generate(static_model, tokenizer, prompts, batch_size=16, max_new_tokens=4,
                                 max_cache_len=max_cache_len, seed=1, **SETTINGS)
    assert 2 <= r["tokens"] <= 8 and r["row_steps"] <= 8 and r["recompiles"] == 0


def _generation_results() -> dict:
    run = {"tokens": 100.0, "seconds": 2.0, "tokens_per_s": 50.0, "row_steps": 120.0}
    s = {"median": 1.5, "min": 1.4, "max": 1.6, "n": 1}
    return {
        "settings": {"model": "tiny", "prompts": 2, "max_new_tokens": 4, "batch_size": 16, "dtype": "float32",
                     "pairs": 1, "source": "x", "temperature": 1.0, "top_p": 1.0},
        "runs": {"ours": [run], "spin_recipe": [run], "hf_continuous": [{**run, "seconds_to_last_token": 1.5}]},
        "tokens_per_s": {arm: s for arm in ("ours", "spin_recipe", "hf_continuous")},
        "ratio_ours_over_spin": s, "ratio_ours_over": {"spin_recipe": s, "hf_continuous": s},
        "arms": {"hf_continuous": {"attn_implementation": "sdpa", "max_requests_per_batch": 16, "num_blocks": 39,
                                   "page_size": 256, "max_batch_tokens": 3200},
                 "compiled_static": {"mode": "reduce-overhead", "fullgraph": True, "max_cache_len": 64}},
        "unavailable": {"compiled_static": "BackendCompilerFailed: no C++ compiler"},
        "spin_recipe_finished_row_fraction": s,
        "decode_bound": {"weight_bytes": 1e6, "mean_context": 10.0, "kv_bytes_per_token": 1e3, "bytes_per_step": 2e6,
                         "max_steps_per_s": 10.0, "memory_bound_tokens_per_s": 160.0,
                         "compute_bound_tokens_per_s": 500.0, "params": 1e5, "binding": "memory",
                         "bound_tokens_per_s": 160.0},
        "ours_over_bound": {"median": 0.3, "min": 0.3, "max": 0.3, "n": 1}, "profile_ours": "", "profile_ours_run": "Name  Self CPU %\naten::mm  40%",
    }


def test_report_lists_every_arm_its_ratio_or_its_reason() -> None:
    from bench.report import _generation

    text = "\n".join(_generation(_generation_results()))
    assert "| hf_continuous | 1.5 (1.4–1.6) |" in text
    assert "ratio ours / hf_continuous (median of per-pair ratios): 1.50 (1.40–1.60)x" in text
    assert "ratio ours / compiled_static: not measured (BackendCompilerFailed: no C++ compiler)" in text
    assert "`compiled_static` could not run on this machine: BackendCompilerFailed" in text
    assert "`max_requests_per_batch` 16" in text and "the last token came at 75% of the call's time" in text
    assert "one whole run at the measured size" in text and "aten::mm" in text
    # Results written before these arms existed still render.
    old = {k: v for k, v in _generation_results().items() if k not in ("arms", "unavailable", "ratio_ours_over",
                                                                          "profile_ours_run")}
    assert "ratio ours /" not in "\n".join(_generation(old)).replace("Ratio ours / SPIN", "")


def test_run_flags() -> None:
    from bench.run import parse_args

    args = parse_args(["--only", "gen", "--profile"])
    assert args.profile and args.gen_arms == ("hf_continuous", "compiled_static")
    assert parse_args(["--gen-arms", ""]).gen_arms == () and not parse_args([]).profile
    with pytest.raises(SystemExit):
        parse_args(["--gen-arms", "vllm"])
