"""Agents against their anchors' code (anchen1011/FireAct ``generation.py``, ``tasks/``, ``tools/``;
ReinholdM/SPIN ``convert_alpaca.py``, ``convert_dpo_data.py``), on real rows: our rollouts exported in
FireAct's format and converted by ports of the anchor's scripts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from selfplay.io import read_jsonl, write_jsonl


def anchor_convert_dpo_data(data1: dict, data2: dict) -> list[dict]:
    """ReinholdM/SPIN spin/convert_dpo_data.py:3-36 (without the file I/O and prints)."""
    dpo_data = []
    for key in data1:
        if key in data2:
            if data1[key]["reward"] != data2[key]["reward"]:
                instruction = data1[key]["traj_by_line"][3]
                content1 = "\n".join(data1[key]["traj_by_line"][6:])
                content2 = "\n".join(data2[key]["traj_by_line"][6:])
                dpo_data.append({"instruction": instruction, "input": "",
                                 "chosen": content1 if data1[key]["reward"] else content2,
                                 "rejected": content2 if data1[key]["reward"] else content1})
    return dpo_data


def anchor_convert_alpaca(data: dict) -> list[dict]:
    """ReinholdM/SPIN spin/convert_alpaca.py:17-29."""
    return [{"instruction": value["traj_by_line"][3], "input": "", "output": "\n".join(value["traj_by_line"][6:])}
            for key, value in data.items()]


class ScriptedAgent:
    """A sampler stand-in: script(question, step) -> the step text after "Thought:"."""

    tokenizer = None

    def __init__(self, script) -> None:
        self.script = script

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, stop=None, progress=True):
        out = []
        for p in prompts:
            question = re.search(r"### Instruction:\n(.*?)\n\n### Response:", p, re.DOTALL)[1]
            out.append([self.script(question, p.count("\nObservation:"))])
        return out


@pytest.fixture(scope="module")
def two_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """Two rollouts of 8 real HotpotQA questions by scripted agents that answer differently."""
    from selfplay.methods import load_config
    from selfplay.stages.agent_rollout import run_agent_rollout

    tmp = tmp_path_factory.mktemp("fireact_runs")
    rows = json.loads((shared_data / "hotpotqa" / "dev_200.json").read_text())[:8]
    records = [{"id": f"hq{i}", "messages": [{"role": "user", "content": r["question"]}], "reference": r["answer"],
                "meta": {"task": "hotpotqa", "answer": r["answer"]}} for i, r in enumerate(rows)]
    write_jsonl(tmp / "q.jsonl", records)
    gold = {r["question"]: (i, r["answer"]) for i, r in enumerate(rows)}
    query = next(iter(json.loads((shared_data / "agent" / "search_cache.json").read_text())))

    def agent(right) -> ScriptedAgent:
        def script(question: str, step: int) -> str:
            i, answer = gold[question]
            if step == 0:
                return f" I need to search.\nAction: search[{query}]"
            if right(i) is None:
                return f" Search again.\nAction: search[{query}]"  # never finishes
            return f" So the answer is known.\nAction: finish[{answer if right(i) else 'nobody'}]"
        return ScriptedAgent(script)

    cfg = load_config(None, ["method=agent-dpo", f"agent.search_sources=[{shared_data / 'agent' / 'search_cache.json'}]"])
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, samples=1, max_steps=4))
    runs = []
    for name, right in (("a", lambda i: i % 2 == 0), ("b", lambda i: None if i == 5 else i % 3 == 0)):
        shard = run_agent_rollout(cfg, "scripted", tmp / "q.jsonl", tmp / name, sampler=agent(right))
        runs.append(shard)
    return runs[0], runs[1], records


def test_fireact_export_is_the_anchors_output_form(two_runs, cli, tmp_path: Path) -> None:
    a, b, records = two_runs
    out = tmp_path / "b.json"
    result = cli(["rollout", "export", b, "--format", "fireact", "--out", out])
    assert result.exit_code == 0, result.output
    assert "1 unfinished skipped" in result.output
    exported = json.loads(out.read_text())
    assert sorted(exported) == sorted(r["id"] for r in records if r["id"] != "hq5")  # finished only, keyed by id
    for key, entry in exported.items():
        assert list(entry) == ["reward", "em", "f1", "gt", "pred", "prompt", "traj", "traj_by_line"]
        assert isinstance(entry["reward"], bool) and isinstance(entry["em"], bool) and entry["prompt"] == ""
        assert entry["traj_by_line"] == entry["traj"].split("\n")
        assert entry["traj_by_line"][3] == next(r for r in records if r["id"] == key)["messages"][0]["content"]
        assert entry["traj"].endswith(f"Observation: Episode finished, reward = {entry['reward']}\n")
    # the anchor's convert_alpaca.py: the question and the ReAct response of every trajectory
    alpaca = anchor_convert_alpaca(exported)
    ours = {r["id"]: r for r in read_jsonl(b)}
    assert [x["output"] for x in alpaca] == [ours[k]["traj"].split("### Response:\n", 1)[1] for k in exported]


def test_anchor_dpo_conversion_of_our_export_gives_our_agent_pairs(two_runs, cli, tmp_path: Path) -> None:
    """Our rollouts -> --format fireact -> the anchor's convert_dpo_data.py -> the pairs of `rollout agent-pairs`."""
    from selfplay.core.examples import Segment, response_text

    a, b, _ = two_runs
    exports = []
    for src in (a, b):
        exports.append(tmp_path / f"{src.parent.name}.json")
        assert cli(["rollout", "export", src, "--format", "fireact", "--out", exports[-1]]).exit_code == 0
    anchor = anchor_convert_dpo_data(*(json.loads(p.read_text()) for p in exports))
    assert len(anchor) == 3  # questions 2, 3 and 4 differ (5 is unfinished in b: absent from its file)
    for source in ((a, b), tuple(exports)):
        out = tmp_path / "pairs.jsonl"
        result = cli(["rollout", "agent-pairs", *source, "--out", out])
        assert result.exit_code == 0, result.output
        pairs = read_jsonl(out)
        text = [{"instruction": p["prompt"][-1]["content"], "input": "",
                 "chosen": response_text([Segment(**s) for s in p["chosen"]]),
                 "rejected": response_text([Segment(**s) for s in p["rejected"]])} for p in pairs]
        assert text == anchor
