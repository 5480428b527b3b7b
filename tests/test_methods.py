"""The method registry, training records with per-token masks, the objectives, and `sft` as a method."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from selfplay.core.examples import Segment, load_examples, tokenize_records, tokenize_segments
from selfplay.errors import ConfigError, DataError
from selfplay.io import read_jsonl, write_jsonl

FAST = ["--set", "train.precision=fp32", "--set", "train.logging_steps=1"]
TINY = ["--set", "data.num=20", "--set", "data.eval_num=4", "--set", "generate.max_new_tokens=16",
        "--set", "generate.batch_size=4", "--set", "train.batch_size=4", "--set", "train.lr=1e-3",
        "--set", "train.precision=fp32", "--set", "eval.max_new_tokens=16", "--set", "train.logging_steps=1"]


# --------------------------------------------------------------------------- registry and config checks


def test_every_method_is_complete() -> None:
    from selfplay.core.objectives import OBJECTIVES
    from selfplay.methods import METHODS
    from selfplay.stages.collect import COLLECTORS
    from selfplay.stages.evaluate import EVALUATIONS

    assert {"spin", "sppo", "gpo", "dpo", "sft"} <= set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.collects in COLLECTORS and method.objective in OBJECTIVES
        assert method.default_loss in OBJECTIVES[method.objective].loss_names()
        assert all(e in EVALUATIONS for e in method.evaluations)


def test_stages_never_branch_on_a_method_name() -> None:
    stages = Path(__file__).resolve().parents[1] / "selfplay" / "stages"
    pattern = re.compile(r'(==|!=) "(spin|sppo|gpo|dpo|sft|rise|spin-agent)"|in \("sppo", "gpo"\)')
    offenders = [f"{p.name}:{i}" for p in stages.glob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []


@pytest.mark.parametrize("sets, message", [
    (["method=spni"], "Did you mean 'spin'"),
    (["method=sppo", "train.label_smoothing=0.1"], "label_smoothing"),
    (["method=sft", "train.loss=sigmoid"], "not a likelihood loss"),
    (["method=spin", "train.loss=rwr"], "not a preference loss"),
    (["method=sppo", "generate.n=1"], "generate.n must be at least 2"),
])
def test_config_mistakes_fail_when_the_config_is_built(sets: list[str], message: str) -> None:
    from selfplay.methods import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_config_mistake_stops_train_before_any_model_is_loaded(cli, tmp_path: Path) -> None:
    res = cli(["train", "--model", tmp_path / "no-such-model", "--data", tmp_path / "none.jsonl", "--out",
               tmp_path / "o", "--method", "sppo", "--set", "train.label_smoothing=0.2"])
    assert res.exit_code == 2 and "label_smoothing" in res.output and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- records and masks


def test_segments_tokenize_with_masks(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    segs = [Segment("Thought: search it\nAction: search[x]"), Segment("\nObservation: Paris\n", train=False),
            Segment("Action: finish[Paris]")]
    ids, mask = tokenize_segments(tok, segs)
    lens = [len(tok(s.text, add_special_tokens=False)["input_ids"]) for s in segs]
    assert mask == [True] * lens[0] + [False] * lens[1] + [True] * lens[2] + [True]  # + trained EOS
    assert ids[-1] == tok.eos_token_id
    # a response ending in context has no EOS to learn
    ids, mask = tokenize_segments(tok, segs[:2])
    assert len(ids) == lens[0] + lens[1] and mask[-1] is False


def test_load_examples_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = {"id": "a", "prompt": [{"role": "user", "content": "q"}], "response": "r", "reward": 1}
    cases = [
        ({"id": "b", "prompt": [{"role": "user", "content": "q"}], "response": [{"text": "x", "train": "yes"}]},
         "field 'response[0].train'"),
        ({"id": "b", "prompt": [{"role": "user", "content": "q"}], "response": [{"text": "obs", "train": False}]},
         "no segment is trained"),
        ({"id": "b", "prompt": [{"role": "robot", "content": "q"}], "response": "r"}, "field 'prompt[0].role'"),
        ({"id": "b", "prompt": [{"role": "user", "content": "q"}], "response": "r"}, "field 'reward'"),
        ({"id": "b", "prompt": [{"role": "user", "content": "q"}], "chosen": "x", "rejected": "y"}, "is a pair"),
        ({"id": "a", "prompt": [{"role": "user", "content": "q"}], "response": "r", "reward": 0}, "duplicate id"),
    ]
    for row, message in cases:
        path = tmp_path / "ex.jsonl"
        write_jsonl(path, [good, row])
        with pytest.raises(DataError, match=re.escape(message)) as e:
            load_examples(path, "single", ("reward",))
        assert "ex.jsonl" in str(e.value) and "line 2" in str(e.value)


def test_masked_tokens_get_no_gradient(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Observation tokens inside a response are fed to the model as context but never scored: the log-prob
    is the sum over trained tokens only, and the logits predicting observation tokens get zero gradient."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfplay.core.logprobs as lp

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = [{"id": "t", "prompt": [{"role": "user", "content": "Who?"}],
             "response": [{"text": "Action: search[x]", "train": True},
                          {"text": "\nObservation: Paris is big", "train": False},
                          {"text": "\nAction: finish[Paris]", "train": True}]}]
    write_jsonl(tmp_path / "ex.jsonl", rows)
    (example,), _ = tokenize_records(load_examples(tmp_path / "ex.jsonl", "single"), tok, prompt_format="chat",
                                     max_length=256, max_prompt_length=128)
    mask = example.masks[0]
    assert 0 < sum(mask) < len(mask)
    batch = lp.example_batch([example], tok.pad_token_id)
    logps, ntok = lp.sequence_logps(model, batch)  # the chunked path on this plain model
    with torch.no_grad():
        ids = torch.tensor([example.prompt_ids + example.responses[0]])
        token_logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        n = len(example.prompt_ids)
        naive = sum(token_logps[n - 1 + j, t].item() for j, (t, m) in enumerate(zip(example.responses[0], mask)) if m)
    assert abs(logps.item() - naive) < 1e-4 and int(ntok) == sum(mask)

    monkeypatch.setattr(lp, "_decoder_and_head", lambda m: None)  # the full-logits path, to see every logit
    kept: dict[str, torch.Tensor] = {}

    def keep_logits(module, inputs, output):
        output.retain_grad()
        kept["logits"] = output

    model.lm_head.register_forward_hook(keep_logits)
    logps, _ = lp.sequence_logps(model, batch)
    logps.sum().backward()
    grad = kept["logits"].grad[0, :-1].norm(dim=-1)  # [R]: position j predicts response token j
    trained = torch.tensor(mask)
    assert bool((grad[~trained] == 0).all()) and bool((grad[trained] > 0).all())


# --------------------------------------------------------------------------- objectives


def test_likelihood_objective_hand_numbers() -> None:
    from selfplay.config import TrainConfig
    from selfplay.core.objectives import get_objective

    obj = get_objective("likelihood")
    assert not obj.needs_reference and obj.required_fields("rwr") == ("reward",) and obj.required_fields("sft") == ()
    logps, ntok = torch.tensor([-4.0, -9.0]), torch.tensor([2, 3])
    # sft: token-level mean over the batch = 13 / 5
    loss, m = obj.compute("sft", logps, ntok, {}, None, TrainConfig(), ("response", "response"))
    assert math.isclose(loss.item(), 13 / 5, rel_tol=1e-6) and math.isclose(m["nll"].item(), (2 + 3) / 2)
    # rwr, exp weights with tau 0.4: rewards 1 and -1 -> e^2.5 * 2 and e^-2.5 * 3 per-token NLLs, batch mean
    rewards = {"reward": torch.tensor([1.0, -1.0])}
    loss, m = obj.compute("rwr", logps, ntok, rewards, None, TrainConfig(), ("response", "response"))
    assert math.isclose(loss.item(), (math.exp(2.5) * 2 + math.exp(-2.5) * 3) / 2, rel_tol=1e-6)
    # rwr with the raw reward as weight: 1 * 2 + (-1) * 3 -> mean -0.5
    loss, _ = obj.compute("rwr", logps, ntok, rewards, None, TrainConfig(rwr_weighting="reward"), ("r", "r"))
    assert math.isclose(loss.item(), (2 - 3) / 2, rel_tol=1e-6)


def test_preference_objective_is_the_loss_table() -> None:
    from selfplay.config import TrainConfig
    from selfplay.core import losses as L
    from selfplay.core.objectives import get_objective

    obj = get_objective("preference")
    logps = torch.tensor([-1.0, -2.0, -3.0, -4.0])  # chosen rows, then rejected rows
    ref = torch.tensor([[-1.5, -2.5], [-2.0, -4.5]])
    values = {"chosen_prob": torch.tensor([0.8, 0.6]), "rejected_prob": torch.tensor([0.3, 0.4])}
    loss, m = obj.compute("sppo", logps, torch.ones(4), values, ref, TrainConfig(beta=0.1), ("chosen", "rejected"))
    direct = L.sppo_loss(logps[:2], logps[2:], ref[:, 0], ref[:, 1], beta=0.1, **values)
    assert torch.isclose(loss, direct.losses.mean())
    assert set(m) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                      "logps/chosen", "logps/rejected"}


# --------------------------------------------------------------------------- sft as a method, compare


def test_sft_train_cli_needs_no_reference(cli, tiny_model: Path, tmp_path: Path) -> None:
    rows = [{"id": f"s{i}", "prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "response": f"{i + 1}"}
            for i in range(6)]
    write_jsonl(tmp_path / "ex.jsonl", rows)
    res = cli(["train", "--method", "sft", "--model", tiny_model, "--data", tmp_path / "ex.jsonl", "--out",
               tmp_path / "o", "--batch-size", "3", "--lr", "1e-3", *FAST])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "o" / "ref_logps.jsonl").exists()
    metrics = read_jsonl(tmp_path / "o" / "metrics.jsonl")
    assert {"loss", "nll", "weight", "logps/response"} <= set(metrics[-1]) and metrics[-1]["weight"] == 1.0


def test_sft_loop_and_compare_with_spin(cli, tiny_model: Path, tmp_path: Path) -> None:
    base = ["--iters", "2", "--model", tiny_model, "--data", "synth:arith", *TINY]
    for method in ("sft", "spin"):
        res = cli(["loop", "--method", method, "--run-dir", tmp_path / method, *base])
        assert res.exit_code == 0, res.output
    sft_rows = read_jsonl(tmp_path / "sft" / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in sft_rows] == ["base", 0, 1]
    assert not (tmp_path / "sft" / "iter_0" / "generate").exists()  # nothing generated
    assert all(isinstance(r["real_loglik"], float) for r in sft_rows)
    # SFT raises the likelihood of the real answers it trains on
    assert sft_rows[2]["real_loglik"] > sft_rows[0]["real_loglik"]
    ex = read_jsonl(tmp_path / "sft" / "iter_1" / "train_data" / "examples.jsonl")
    assert len(ex) == 16 and all(isinstance(e["response"], str) for e in ex)  # not mixed with iteration 0
    res = cli(["eval", "compare", tmp_path / "spin", tmp_path / "sft", "--out", tmp_path / "cmp.png"])
    assert res.exit_code == 0, res.output
    assert "real loglik" in res.output and "spin" in res.output and "sft" in res.output
    assert "sft − spin" in res.output  # paired differences, per iteration
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    res = cli(["eval", "compare", tmp_path / "spin", tmp_path / "sft", "--json"])
    out = json.loads(res.stdout)
    assert set(out["runs"]) == {"spin", "sft"}
    # Both start from the same model on the same held-out prompts: the base rows agree exactly.
    base = [d for d in out["differences"] if d["iteration"] == "base"]
    assert base and all(d["delta"] == 0 and d["significant"] is False for d in base)
    assert any(d["metric"] == "real_loglik" and d["iteration"] == 1 for d in out["differences"])


def test_tensorboard_tracker(cli, tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="needs the dev extra (tensorboard)")
    from test_train import make_pairs

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=4)
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "o", "--batch-size", "2",
               "--set", "train.report_to=[tensorboard]", *FAST])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "o" / "trackers").rglob("events.out.tfevents.*"))
