"""Readers and normalizers: what each real format becomes, every file kind, load_sft and reuse."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from selfplay.data.records import ensure_prepared, load_sft, prepare_source
from selfplay.errors import DataError, UserError
from selfplay.io import read_json, read_jsonl

ONE_TURN = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]


def _prepare(cli, source: Path | str, out: Path, *args: str) -> list[dict]:
    result = cli(["data", "prepare", source, "--out", out, *args])
    assert result.exit_code == 0, result.output
    return read_jsonl(out / "train.jsonl")


def test_gsm8k_and_math_keep_the_final_answer(cli, shared_data, tmp_path):
    gsm8k = _prepare(cli, shared_data / "gsm8k/train_500.jsonl", tmp_path / "g")
    assert gsm8k[0]["meta"] == {"task": "gsm8k", "answer": "12"}
    assert gsm8k[0]["messages"][0]["content"].startswith("Josh wants to build a square sandbox")
    assert gsm8k[0]["reference"].endswith("#### 12")
    assert len({r["id"] for r in gsm8k}) == 500
    math = _prepare(cli, shared_data / "math/test_200.jsonl", tmp_path / "m")
    assert math[0]["meta"]["answer"] == "\\frac{7}{20}" and math[0]["meta"]["task"] == "math"
    assert math[1]["meta"]["answer"] == "-16"
    assert {"level", "type"} <= set(math[0]["meta"])


def test_hotpotqa_and_fireact_records(cli, shared_data, tmp_path):
    hotpot = _prepare(cli, shared_data / "hotpotqa/dev_200.json", tmp_path / "h")
    assert hotpot[0]["reference"] == "Antrim"
    assert hotpot[0]["meta"] == {"task": "hotpotqa", "answer": "Antrim", "type": "bridge"}
    alpaca = _prepare(cli, shared_data / "fireact/hotpotqa_alpaca_200.json", tmp_path / "a")
    assert alpaca[0]["messages"][0]["content"].startswith("The Argentine city Crespo")
    assert alpaca[0]["reference"].startswith("Thought:") and "finish[1810]" in alpaca[0]["reference"]
    trajs = _prepare(cli, shared_data / "fireact/trajs_llama2_7b_150.json", tmp_path / "t")
    first = trajs[0]
    assert first["id"] == "4450"
    assert first["messages"] == [{"role": "user", "content": "Which of the cities of Dujiangyan City and Ezhou "
                                  "has the larger population according to their latest census ?"}]
    assert first["reference"].startswith("Thought: I need to search") and "### Response" not in first["reference"]
    assert {k: first["meta"][k] for k in ("reward", "em", "f1", "gt")} == {"reward": False, "em": False,
                                                                          "f1": 0, "gt": "ezhou"}
    assert first["meta"]["answer"] == "ezhou"
    assert sum(r["meta"]["reward"] for r in trajs) == 41


def test_spin_pairs_from_parquet(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    generated = [ONE_TURN[0], {"role": "assistant", "content": "Maybe green?"}]
    rows = [{"real": ONE_TURN, "generated": generated}, {"real": ONE_TURN[:1] + [{"role": "assistant",
                                                                               "content": "Red."}],
                                                          "generated": generated}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    records = _prepare(cli, tmp_path / "pairs.parquet", tmp_path / "o")
    assert [r["reference"] for r in records] == ["Blue.", "Red."]
    assert records[0]["messages"] == ONE_TURN[:1] and records[0]["meta"]["generated"] == "Maybe green?"
    assert read_json(tmp_path / "o/metadata.json")["format"] == "spin"


def test_chosen_rejected_strings_with_prompt(cli, tmp_path):
    source = tmp_path / "dpo.jsonl"
    source.write_text(json.dumps({"prompt": "Say yes", "chosen": "Yes", "rejected": "No"}) + "\n")
    (record,) = _prepare(cli, source, tmp_path / "o")
    assert record["messages"] == [{"role": "user", "content": "Say yes"}] and record["reference"] == "Yes"
    assert record["meta"]["rejected"] == "No"
    trl_style = {"prompt": [{"role": "user", "content": "Say yes"}], "chosen": [{"role": "assistant", "content": "Yes"}],
                 "rejected": [{"role": "assistant", "content": "No"}]}
    source.write_text(json.dumps(trl_style) + "\n")
    assert _prepare(cli, source, tmp_path / "trl") == [record]


def test_alpaca_from_csv_and_json_array(cli, tmp_path):
    rows = [{"instruction": "Translate", "input": "bonjour", "output": "hello"},
            {"instruction": "Say hi", "input": "", "output": "hi"}]
    with (tmp_path / "a.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    for name in ("a.csv", "a.json"):
        records = _prepare(cli, tmp_path / name, tmp_path / f"out-{name}")
        assert [r["messages"][0]["content"] for r in records] == ["Translate\n\nbonjour", "Say hi"]
        assert [r["reference"] for r in records] == ["hello", "hi"]
        assert [r["id"] for r in records] == ["a-0", "a-1"]


def test_csv_cells_with_json_message_lists(cli, tmp_path):
    with (tmp_path / "m.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "messages"])
        writer.writerow(["x1", json.dumps(ONE_TURN)])
    (record,) = _prepare(cli, tmp_path / "m.csv", tmp_path / "o")
    assert record["id"] == "x1" and record["reference"] == "Blue."


def test_sharegpt_from_save_to_disk_with_split(cli, tmp_path):
    import datasets

    def conv(answer: str) -> dict:
        return {"id": answer, "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": answer}]}

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([conv("a"), conv("b")]),
                          "test": datasets.Dataset.from_list([conv("c")])}).save_to_disk(str(saved))
    records = _prepare(cli, saved, tmp_path / "o1")
    assert [r["reference"] for r in records] == ["a", "b"]
    assert records[0]["messages"] == [{"role": "user", "content": "Q?"}]
    assert [r["reference"] for r in _prepare(cli, saved, tmp_path / "o2", "--split", "test")] == ["c"]
    result = cli(["data", "prepare", saved, "--out", tmp_path / "o3", "--split", "dev"])
    assert result.exit_code == 2 and "no split 'dev'" in result.stderr and "train" in result.stderr
    single = tmp_path / "single"
    datasets.Dataset.from_list([conv("z")]).save_to_disk(str(single))
    assert [r["reference"] for r in _prepare(cli, single, tmp_path / "o4")] == ["z"]


def test_prompt_response_and_prepared_dir_as_source(cli, tmp_path):
    source = tmp_path / "pr.jsonl"
    source.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n"
                      + json.dumps({"prompt": "Bye", "response": "See you"}) + "\n")
    first = _prepare(cli, source, tmp_path / "o1")
    assert [r["reference"] for r in first] == ["Hello", "See you"]
    again = _prepare(cli, tmp_path / "o1", tmp_path / "o2")  # a prepared dir reads back as canonical records
    assert again == first
    assert read_json(tmp_path / "o2/metadata.json")["format"] == "sft"


def test_load_sft_validates_records(tmp_path):
    prepare_source("synth:arith?num=6&seed=1", tmp_path / "d", test_size=2, show_progress=False)
    assert len(load_sft(tmp_path / "d")) == 4 and len(load_sft(tmp_path / "d", "test")) == 2
    assert load_sft(tmp_path / "d/train.jsonl") == load_sft(tmp_path / "d")
    with pytest.raises(DataError, match="no 'validation' split"):
        load_sft(tmp_path / "d", "validation")
    bad_cases = [
        ({"messages": ONE_TURN[:1], "reference": "x"}, "line 2, field 'id'"),
        ({"id": "b", "reference": "x"}, "line 2, field 'messages'"),
        ({"id": "b", "messages": ONE_TURN, "reference": "x"}, "field 'messages\\[1\\].role'"),
        ({"id": "b", "messages": [{"role": "user", "content": 3}], "reference": "x"}, "messages\\[0\\].content"),
        ({"id": "b", "messages": ONE_TURN[:1], "reference": 5}, "field 'reference'"),
        ({"id": "a", "messages": ONE_TURN[:1], "reference": "x"}, "duplicate id"),
    ]
    for record, pattern in bad_cases:
        path = tmp_path / "bad.jsonl"
        good = {"id": "a", "messages": ONE_TURN[:1], "reference": "Blue."}
        path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
        with pytest.raises(DataError, match=pattern):
            load_sft(path)
    with pytest.raises(DataError, match="run `selfplay data prepare`"):
        (tmp_path / "raw.json").write_text("[]")
        load_sft(tmp_path / "raw.json")


def test_ensure_prepared_reuses_until_an_input_changes(tmp_path):
    source = tmp_path / "pr.jsonl"
    source.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    out = ensure_prepared(str(source), tmp_path / "d", show_progress=False)
    stamp = (out / "metadata.json").stat().st_mtime_ns
    assert ensure_prepared(str(source), out, show_progress=False) == out
    assert (out / "metadata.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    source.write_text(source.read_text() + json.dumps({"prompt": "Yo", "response": "Hey"}) + "\n")
    assert len(load_sft(ensure_prepared(str(source), out, show_progress=False))) == 2
    assert len(load_sft(ensure_prepared("synth:arith?num=3", out))) == 3


def test_synthetic_source_parameters(tmp_path):
    prepare_source("synth:arith", tmp_path / "a", num=5, seed=4)
    prepare_source("synth:arith?num=5&seed=4", tmp_path / "b")
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()
    with pytest.raises(UserError, match="must be an integer"):
        prepare_source("synth:arith?num=many", tmp_path / "c")
    with pytest.raises(UserError, match="does not apply"):
        prepare_source("synth:arith", tmp_path / "c", format="gsm8k")


def test_mmlu_headerless_csv_as_the_anchor_reads_it(cli, shared_data, tmp_path):
    """FireAct/SPIN's MMLUTask (tasks/mmlu.py:27-34): pd.read_csv(header=None), the question formatted with
    its four choices, the gold the letter; our records carry exactly that prompt and letter."""
    pd = pytest.importorskip("pandas")
    path = shared_data / "mmlu" / "abstract_algebra_test.csv"
    ours = _prepare(cli, path, tmp_path / "m")
    anchor = [{"question": "Question: {}\nA. {}\nB. {}\nC. {}\nD. {}".format(*row[:5]), "answer": row[5]}
              for row in pd.read_csv(path, header=None).values]
    assert len(ours) == len(anchor) == 100
    assert [r["messages"][0]["content"] for r in ours] == [a["question"] for a in anchor]
    assert [r["meta"]["answer"] for r in ours] == [r["reference"] for r in ours] == [a["answer"] for a in anchor]
    assert all(r["meta"]["task"] == "mmlu" for r in ours)
    dev = _prepare(cli, shared_data / "mmlu" / "abstract_algebra_dev.csv", tmp_path / "d")
    assert len(dev) == 5 and dev[0]["meta"]["choices"] == ["0", "1", "2", "3"]
    # the hub's form (question, choices, answer index) gives the same prompt
    hub = tmp_path / "hub.jsonl"
    hub.write_text(json.dumps({"question": "2+2?", "choices": ["1", "4", "[0, 1]", "5"], "answer": 1}) + "\n")
    row = _prepare(cli, hub, tmp_path / "h")[0]
    assert row["messages"][0]["content"] == "Question: 2+2?\nA. 1\nB. 4\nC. [0, 1]\nD. 5" and row["reference"] == "B"


def test_mmlu_csv_cells_stay_text_and_bad_letters_are_named(cli, tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_text('What is 1?,"[0, 1]",b,c,d,A\nWhat is 2?,a,b,c,d,E\n')
    result = cli(["data", "prepare", path, "--out", tmp_path / "o"])
    assert result.exit_code == 2 and "row 1" in result.output and "answer" in result.output
    rows = _prepare(cli, path, tmp_path / "o2", "--skip-invalid")
    assert rows[0]["meta"]["choices"][0] == "[0, 1]"


def test_bamboogle_csv_and_strategyqa_json(cli, tmp_path):
    bamboogle = tmp_path / "test.csv"  # FireAct's data/bamboogle/test.csv layout
    bamboogle.write_text("Question,Answer\nWho was president of the United States in the year that Citibank "
                         "was founded?,james madison\nWhat is the capital of France?,Paris\n")
    rows = _prepare(cli, bamboogle, tmp_path / "b")
    assert rows[0]["meta"] == {"task": "bamboogle", "answer": "james madison"}
    assert rows[1]["messages"][0]["content"] == "What is the capital of France?"
    strategyqa = tmp_path / "strategyqa_dev.json"  # FireAct's data/strategyqa layout
    strategyqa.write_text(json.dumps([
        {"qid": "e0044a7b4d146d611e73", "term": "Albany, Georgia", "description": "City in Georgia",
         "question": "Will the Albany in Georgia reach a hundred thousand occupants before the one in New York?",
         "answer": False, "facts": ["Albany, GA has around 75,000 people"], "decomposition": ["..."]},
        {"qid": "q2", "question": "Is water wet?", "answer": True}]))
    rows = _prepare(cli, strategyqa, tmp_path / "s")
    assert [r["id"] for r in rows] == ["e0044a7b4d146d611e73", "q2"]
    assert [r["meta"]["answer"] for r in rows] == [r["reference"] for r in rows] == ["no", "yes"]
    assert rows[0]["meta"]["task"] == "strategyqa"
