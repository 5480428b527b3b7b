"""Judges behind one interface: spec parsing, verifier, reward model, GPM and PairRM (with a stand-in Blender)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from selfplay.errors import MissingExtraError, UserError
from selfplay.judges import make_judge, parse_judge_spec

GSM_REFERENCE = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips altogether.\n#### 72"
QUESTION = [{"role": "user", "content": "How many clips did Natalia sell altogether in April and May?"}]


def item(samples: list[str], row_id: str = "p0", **kw) -> dict:
    return {"id": row_id, "prompt_messages": QUESTION, "samples": samples, **kw}


# ----------------------------------------------------------------------------- specs


def test_spec_parsing_keeps_url_colons() -> None:
    assert parse_judge_spec("llm-judge:http://127.0.0.1:8000/v1#gpt") == ("llm-judge", "http://127.0.0.1:8000/v1#gpt")
    assert parse_judge_spec("pairrm") == ("pairrm", None)
    assert parse_judge_spec("verifier:gsm8k") == ("verifier", "gsm8k")


def test_unknown_judge_suggests_the_nearest() -> None:
    with pytest.raises(UserError, match="unknown judge 'pairm'.*Did you mean 'pairrm'"):
        make_judge("pairm")


@pytest.mark.parametrize("spec", ["gpm", "reward-model", "verifier", "llm-judge"])
def test_judges_that_need_an_argument_say_so(spec: str) -> None:
    with pytest.raises(UserError, match=f"judge '{spec}' needs"):
        make_judge(spec)


def test_unknown_verifier_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown verifier"):
        make_judge("verifier:gsm9k")


# ----------------------------------------------------------------------------- verifier


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_verifier_scores_each_sample_against_the_reference(k: int) -> None:
    wrong = [f"I think the answer is {n}.\n#### {n}" for n in range(60, 60 + k - 1)]
    samples = wrong[: k // 2] + ["48 + 24 = 72. #### 72"] + wrong[k // 2:]
    judge = make_judge("verifier:gsm8k")
    assert judge.kind == "scores" and judge.needs_reference
    (result,) = judge.score([item(samples, reference=GSM_REFERENCE)])
    expected = [0.0] * k
    expected[k // 2] = 1.0
    assert result == {"scores": expected, "errors": 0}


def test_verifier_without_reference_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs a 'reference'"):
        make_judge("verifier:gsm8k").score([item(["#### 1", "#### 2"])])


# ----------------------------------------------------------------------------- reward model


def tiny_llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **kw)


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaForSequenceClassification

    from selfplay.testing import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("rm") / "tiny-rm"
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_llama_config(tok, num_labels=1)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_model_scores_conversations_in_batches(tiny_reward_model: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    samples = ["72", "The answer is 72.", "#### 70", "no idea", "48 + 24 = 72 clips"]
    batched = make_judge(f"reward-model:{tiny_reward_model}", batch_size=3, device="cpu")
    assert batched.kind == "scores"
    (r1, r2) = batched.score([item(samples), item(samples[:2], "p1")])
    assert len(r1["scores"]) == 5 and len(r2["scores"]) == 2 and r1["errors"] == 0
    assert len(set(r1["scores"])) == 5  # different responses, different rewards
    # the same numbers one conversation at a time, straight from transformers
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    for sample, score in zip(samples, r1["scores"]):
        ids = tok.apply_chat_template(QUESTION + [{"role": "assistant", "content": sample}], tokenize=True,
                                      return_dict=True, return_tensors="pt")
        with torch.no_grad():
            assert model(**ids).logits[0, 0].item() == pytest.approx(score, abs=1e-5)
    assert r2["scores"] == pytest.approx(r1["scores"][:2], abs=1e-5)


def test_reward_model_with_several_outputs_is_rejected(tmp_path: Path) -> None:
    from transformers import LlamaForSequenceClassification

    from selfplay.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    LlamaForSequenceClassification(tiny_llama_config(tok, num_labels=3)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="exactly one"):
        make_judge(f"reward-model:{tmp_path}", device="cpu")


# ----------------------------------------------------------------------------- GPM


def save_tiny_gpm(out: Path, value_head_dim: int, prompt_head: bool, seed: int = 0) -> Path:
    """The GPM repo's CustomRewardModel shape: a causal LM plus value_head (and prompt_head), random weights."""
    import torch
    from torch import nn
    from transformers import LlamaForCausalLM

    from selfplay.testing import build_tiny_tokenizer

    class TinyGPM(LlamaForCausalLM):
        def __init__(self, config) -> None:
            super().__init__(config)
            self.value_head = nn.Linear(config.hidden_size, value_head_dim, bias=False)
            if prompt_head:
                self.prompt_head = nn.Linear(config.hidden_size, value_head_dim // 2, bias=False)
            self.post_init()

    tok = build_tiny_tokenizer()
    torch.manual_seed(seed)
    TinyGPM(tiny_llama_config(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def gpm_reference_embedding(path: Path, conversation: list[dict]):
    """One conversation, unbatched, the GPM repo's way: (unit value embedding, prompt-end hidden state)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaModel

    tok = AutoTokenizer.from_pretrained(path)
    weights = load_file(str(path / "model.safetensors"))
    base = LlamaModel.from_pretrained(path).eval()
    ids = tok(tok.apply_chat_template(conversation, tokenize=False), return_tensors="pt")
    ids["input_ids"][:, -1] = tok.eos_token_id
    with torch.no_grad():
        hidden = base(**ids).last_hidden_state[0]
    prompt_len = len(tok(tok.apply_chat_template(conversation[:-1], tokenize=False))["input_ids"])
    value = torch.nn.functional.normalize(hidden[-1] @ weights["value_head.weight"].T, dim=-1)
    return value, hidden[prompt_len - 1], weights


@pytest.mark.parametrize("k", [2, 3, 5])
def test_gpm_matrix_is_skew_symmetric_and_matches_the_reference(tmp_path: Path, k: int) -> None:
    import torch

    path = save_tiny_gpm(tmp_path / "gpm", value_head_dim=4, prompt_head=True)
    judge = make_judge(f"gpm:{path}", batch_size=2, device="cpu")
    assert judge.kind == "matrix"
    samples = ["72", "The answer is 72 clips.", "#### 70", "I don't know", "48+24"][:k]
    (result,) = judge.score([item(samples)])
    s = torch.tensor(result["win_matrix"])
    assert result["win_matrix_kind"] == "skew_score" and s.shape == (k, k)
    assert torch.equal(s + s.T, torch.zeros(k, k))  # S + Sᵀ = 0 exactly
    assert s.abs().sum() > 0
    # v_iᵀ Rᵀ v_j / τ computed one conversation at a time
    embeds = [gpm_reference_embedding(path, QUESTION + [{"role": "assistant", "content": x}]) for x in samples]
    weights = embeds[0][2]
    b = torch.softmax(embeds[0][1] @ weights["prompt_head.weight"].T, dim=-1)
    r = torch.zeros(4, 4)
    r[0, 1], r[1, 0], r[2, 3], r[3, 2] = -b[0], b[0], -b[1], b[1]
    expected = torch.stack([torch.stack([e_i[0] @ r.T @ e_j[0] for e_j in embeds]) for e_i in embeds]) / 0.1
    assert torch.allclose(s, expected, atol=1e-4)


def test_gpm_without_prompt_head_uses_the_fixed_operator(tmp_path: Path) -> None:
    path = save_tiny_gpm(tmp_path / "gpm2", value_head_dim=2, prompt_head=False, seed=3)
    judge = make_judge(f"gpm:{path}", device="cpu")
    samples = ["72", "#### 70", "no"]
    (result,) = judge.score([item(samples)])
    (v0, _, _), (v1, _, _) = (gpm_reference_embedding(path, QUESTION + [{"role": "assistant", "content": x}])
                              for x in samples[:2])
    # value_head_dim 2: S(0, 1) = (v0[0] v1[1] − v0[1] v1[0]) / τ, as in the GPM repo
    assert result["win_matrix"][0][1] == pytest.approx(float(v0[0] * v1[1] - v0[1] * v1[0]) / 0.1, abs=1e-4)


def test_gpm_bradley_terry_head_gives_scores(tmp_path: Path) -> None:
    path = save_tiny_gpm(tmp_path / "gpm-bt", value_head_dim=1, prompt_head=False)
    judge = make_judge(f"gpm:{path}", device="cpu")
    assert judge.kind == "scores"
    (result,) = judge.score([item(["a", "bb", "ccc"])])
    assert len(result["scores"]) == 3


def test_gpm_rejects_a_checkpoint_without_value_head(tiny_reward_model: Path) -> None:
    with pytest.raises(UserError, match="not a GPM or Bradley-Terry head checkpoint"):
        make_judge(f"gpm:{tiny_reward_model}", device="cpu")


# ----------------------------------------------------------------------------- PairRM (stand-in Blender)

FAKE_LLM_BLENDER = '''
import numpy as np
# Like the real package: this import fails on transformers 5 unless selfplay put the constant back first.
from transformers.utils.hub import TRANSFORMERS_CACHE

calls = []


class Blender:
    def __init__(self):
        self.ranker = None

    def loadranker(self, ranker_path, device=None, **kwargs):
        calls.append(("loadranker", str(ranker_path), device))
        self.ranker = ranker_path

    def rank(self, inputs, candidates, instructions=None, return_scores=False, batch_size=8, **kw):
        assert len(inputs) == len(candidates) and len({len(c) for c in candidates}) == 1
        calls.append(("rank", list(inputs), [list(c) for c in candidates], return_scores, batch_size))
        scores = np.array([[float(len(c)) for c in cands] for cands in candidates])  # longer = better
        return scores if return_scores else (-scores).argsort(axis=1).argsort(axis=1) + 1
'''


@pytest.fixture
def fake_llm_blender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import transformers.utils.hub as hf_hub

    package = tmp_path / "site" / "llm_blender"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_LLM_BLENDER)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "llm_blender", raising=False)
    monkeypatch.delattr(hf_hub, "TRANSFORMERS_CACHE", raising=False)
    yield
    sys.modules.pop("llm_blender", None)


def test_pairrm_ranks_with_scores_through_the_blender_interface(fake_llm_blender, tmp_path: Path) -> None:
    weights = tmp_path / "PairRM"
    weights.mkdir()
    judge = make_judge(f"pairrm:{weights}", batch_size=4, device="cpu")
    import llm_blender
    import transformers.utils.hub as hf_hub

    assert hf_hub.TRANSFORMERS_CACHE  # set before llm_blender was imported
    items = [item(["a", "ccc", "bb"], "p0"), item(["dddd", "e"], "p1"), item(["x", "yyy", "zz"], "p2")]
    results = judge.score(items)
    assert [r["scores"] for r in results] == [[1.0, 3.0, 2.0], [4.0, 1.0], [1.0, 3.0, 2.0]]
    assert llm_blender.calls[0] == ("loadranker", str(weights), "cpu")
    ranks = [c for c in llm_blender.calls if c[0] == "rank"]
    assert len(ranks) == 2  # grouped by K: one call for K=3 (two prompts), one for K=2
    assert all(c[3] is True and c[4] == 4 for c in ranks)
    assert ranks[0][1] == [QUESTION[0]["content"]] * 2


def test_pairrm_offline_without_weights_explains_the_fix(fake_llm_blender, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.utils.hub as hf_hub

    monkeypatch.setattr(hf_hub, "TRANSFORMERS_CACHE", str(tmp_path / "empty-cache"), raising=False)
    with pytest.raises(UserError, match="not on this machine and the hub is offline"):
        make_judge("pairrm", device="cpu")


def test_pairrm_without_llm_blender_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llm_blender", None)  # makes `import llm_blender` fail
    with pytest.raises(MissingExtraError, match=r"selfplay\[rank\]"):
        make_judge("pairrm")
