"""Self-play for tool-using agents (ReinholdM/SPIN: SPIN joined with FireAct), and its DPO and SFT variants.

Each iteration plays ReAct trajectories with the current model and the tools (:mod:`selfplay.stages.agent_rollout`,
:mod:`selfplay.envs.agent_episodes`).
Training records keep the tool observations as context segments, never trained — unless
``agent.train_on_observations`` (off by default): the anchors train them (FireAct's SFT trains the whole
text, its agent DPO chat-template strings holding the observations), so a faithful reproduction may:

* ``spin-agent`` — SPIN pairs: the real (FireAct) trajectory of a question against the model's own;
* ``agent-dpo`` — DPO pairs between two trajectories of the same question whose rewards differ (the
  anchor's ``convert_dpo_data.py``: chosen = the rewarded one); needs ``agent.samples >= 2``;
* ``agent-sft`` — SFT on the successful trajectories (the anchor's ``convert_alpaca.py`` of a rollout).

LoRA adapters by default, as the anchor trains them.
"""

from __future__ import annotations

from typing import Any

from selfplay.core.examples import Segment, segments_to_json
from selfplay.envs.react import Step, parse_trajectory, response_part
from selfplay.errors import ConfigError
from selfplay.methods.base import Method


def trajectory_segments(steps: list[Step], train_on_observations: bool = False) -> list[Segment]:
    """Training segments: each step's ``Thought/Action`` trained, its ``Observation`` line context (trained
    too with ``train_on_observations``)."""
    segments = []
    for s in steps:
        segments.append(Segment(f"Thought: {s.thought}\nAction: {s.action}", True))
        if s.observation is not None:
            segments.append(Segment(f"\nObservation: {s.observation}\n", train_on_observations))
    return segments


def _observations_trained(cfg: Any) -> bool:
    return bool(cfg is not None and cfg.agent.train_on_observations)


def _trajectories(row: dict[str, Any]) -> list[dict[str, Any]]:
    return row.get("samples") or [row]


def _segments(trajectory: dict[str, Any], train_on_observations: bool = False) -> list[Segment]:
    return trajectory_segments([Step(**s) for s in trajectory["steps"]], train_on_observations)


def real_segments(reference: str, train_on_observations: bool = False) -> list[Segment]:
    """The training segments of a real trajectory (an SFT record's reference)."""
    return trajectory_segments(parse_trajectory(response_part(reference)), train_on_observations)


def build_spin_agent_pairs(rows: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict], dict]:
    """chosen = the real trajectory, rejected = the model's own, for every question with a real one."""
    pairs, no_real, identical = [], 0, 0
    observations = _observations_trained(cfg)
    for row in rows:
        real = real_segments(row.get("reference") or "", observations)
        if not any(s.train for s in real):
            no_real += 1
            continue
        for j, traj in enumerate(_trajectories(row)):
            own = _segments(traj, observations)
            if [(s.text, s.train) for s in own] == [(s.text, s.train) for s in real]:
                identical += 1
                continue
            pairs.append({"id": f"{row['id']}#s{j}@it{iteration}", "prompt": traj["prompt"],
                          "chosen": segments_to_json(real), "rejected": segments_to_json(own)})
    return pairs, {"pairs": len(pairs), "dropped_no_real": no_real, "dropped_identical": identical,
                   "own_em": _mean_reward(rows)}


def build_agent_dpo_pairs(rows: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict], dict]:
    """chosen = a rewarded trajectory, rejected = an unrewarded one of the same question."""
    pairs, same = [], 0
    observations = _observations_trained(cfg)
    for row in rows:
        trajs = _trajectories(row)
        good = [t for t in trajs if t["reward"]]
        bad = [t for t in trajs if not t["reward"]]
        if not good or not bad:
            same += 1
            continue
        pairs.append({"id": f"{row['id']}@it{iteration}", "prompt": good[0]["prompt"],
                      "chosen": segments_to_json(_segments(good[0], observations)),
                      "rejected": segments_to_json(_segments(bad[0], observations))})
    return pairs, {"pairs": len(pairs), "dropped_equal_rewards": same, "own_em": _mean_reward(rows)}


def build_agent_sft(rows: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict], dict]:
    """One single-response record per successful trajectory."""
    examples = [{"id": f"{row['id']}#s{j}@it{iteration}", "prompt": t["prompt"],
                 "response": segments_to_json(_segments(t, _observations_trained(cfg)))}
                for row in rows for j, t in enumerate(_trajectories(row)) if t["reward"]]
    return examples, {"examples": len(examples), "own_em": _mean_reward(rows)}


def _mean_reward(rows: list[dict[str, Any]]) -> float | None:
    rewards = [float(bool(t["reward"])) for row in rows for t in _trajectories(row)]
    return sum(rewards) / len(rewards) if rewards else None


def _check(cfg: Any) -> None:
    from selfplay.envs.tasks import TASKS
    from selfplay.envs.tools import check_tools

    a = cfg.agent
    if a.task not in TASKS:
        raise ConfigError(f"agent.task '{a.task}' is not one of {', '.join(TASKS)}")
    check_tools(a, TASKS[a.task])  # names, one that ends episodes, each tool's settings (search: its backend)
    from selfplay.envs.react import ACTION_FORMATS
    from selfplay.envs.tools import observation_style
    from selfplay.errors import suggest

    if a.actions not in ACTION_FORMATS:
        raise ConfigError(f"agent.actions '{a.actions}' is not one of {', '.join(ACTION_FORMATS)}."
                          f"{suggest(a.actions, ACTION_FORMATS)}")
    observation_style(a.observations)
    if a.max_steps < 1 or a.retries < 0 or a.samples < 1:
        raise ConfigError("agent.max_steps must be >= 1, agent.retries >= 0 and agent.samples >= 1")


def _check_dpo(cfg: Any) -> None:
    _check(cfg)
    if cfg.agent.samples < 2:
        raise ConfigError("agent-dpo pairs trajectories of one question whose rewards differ: "
                          f"agent.samples must be at least 2, got {cfg.agent.samples}")


# The anchors' training settings. SPIN for agents (ReinholdM/SPIN spin/run_spin.py:263-292, launched by
# scripts/finetune.sh with configs/config.yaml) and its DPO (spin/run_dpo.py:316-340) hard-code the same
# TrainingArguments: lr 3e-4, 30 epochs, 100 warm-up steps, 16 accumulation steps, fp16, HF's default AdamW
# and linear schedule; batch 2 (SPIN) or 1 (DPO); beta 0.1 (config.yaml; TRL's default for DPOTrainer);
# max length 512 and prompt 512 (config.yaml); LoRA r 16, alpha 32, dropout 0.05 (alignment/configs.py
# ModelArguments defaults, use_peft True) on PEFT's default Llama modules q_proj, v_proj (lora_target_modules
# None, alignment/model_utils.py:89-97). Their rollouts decode greedily (models/llama.py do_sample=False):
# agent.temperature 0 reproduces that, the default 0.7 samples (FireAct's --temperature).
_PRESET: dict[str, Any] = {
    "model": {"lora": {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}},
    "generate": {"prompt_format": "alpaca", "max_new_tokens": 256},
    "train": {"beta": 0.1, "lr": 3e-4, "epochs": 30.0, "optimizer": "adamw", "scheduler": "linear",
              "warmup_steps": 100, "batch_size": 2, "grad_accum": 16, "max_length": 512, "max_prompt_length": 512},
}
# FireAct's LoRA SFT (anchen1011/FireAct finetune/llama_lora/finetune.py:24-46, 193-210 and its README command):
# lr 3e-4, 30 epochs, micro-batch 16 of a batch of 128 (8 accumulation steps), 100 warm-up steps, cutoff 512,
# LoRA r 8, alpha 16, dropout 0.05 on q_proj and v_proj.
_SFT_PRESET: dict[str, Any] = {
    **_PRESET,
    "model": {"lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}},
    "train": {**_PRESET["train"], "batch_size": 16, "grad_accum": 8},
}
_COLUMNS = (("agent_em", "EM", "{:.3f}"), ("agent_f1", "F1", "{:.3f}"), ("agent_steps", "steps", "{:.1f}"),
            ("agent_finished", "finished", "{:.2f}"))

SPIN_AGENT = Method(
    name="spin-agent",
    summary="real ReAct trajectory vs. the agent's own, tool observations as context (SPIN + FireAct)",
    collects="trajectories", build=build_spin_agent_pairs, objective="preference", default_loss="sigmoid",
    preset=_PRESET, mixes_previous=True, names=("real", "generated"), columns=_COLUMNS, evaluations=("agent",),
    target_metric="agent_em", check=_check, margin=True,
)
AGENT_DPO = Method(
    name="agent-dpo",
    summary="DPO between the agent's reward-different trajectories of a question",
    collects="trajectories", build=build_agent_dpo_pairs, objective="preference", default_loss="sigmoid",
    preset={**_PRESET, "train": {**_PRESET["train"], "batch_size": 1}, "agent": {"samples": 2}}, columns=_COLUMNS,
    evaluations=("agent",), target_metric="agent_em", check=_check_dpo,
)
AGENT_SFT = Method(
    name="agent-sft",
    summary="SFT on the agent's successful trajectories (FireAct-style)",
    collects="trajectories", build=build_agent_sft, objective="likelihood", default_loss="sft",
    preset=_SFT_PRESET,
    names=("response", "response"), columns=_COLUMNS, evaluations=("agent",), target_metric="agent_em",
    check=_check, margin=True,  # spin-agent's baseline
)


def read_trajectories(path: Any) -> dict[str, dict[str, Any]]:
    """Trajectories of a FireAct/anchor JSON file (``{idx: {reward, traj, ...}}``) or our rollout JSONL, by
    question id, each with ``steps`` and ``prompt``; a broken entry names the file and the entry id."""
    import json
    import re
    from pathlib import Path

    from selfplay.errors import DataError
    from selfplay.io import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.suffix == ".jsonl":
        entries = [(str(r.get("id", i)), r) for i, r in enumerate(read_jsonl(path), start=1)]
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", path=path, line=e.lineno) from None
        if not isinstance(data, dict):
            raise DataError("expected a JSON object of trajectories keyed by question id", path=path)
        entries = [(str(k), v) for k, v in data.items()]
    out = {}
    for key, entry in entries:
        def bad(message: str, field: str) -> DataError:
            return DataError(f"entry '{key}': {message}", path=path, field=field)

        if not isinstance(entry, dict):
            raise bad(f"expected an object, got {type(entry).__name__}", "<entry>")
        if not isinstance(entry.get("reward"), (bool, int, float)):
            raise bad("missing or not a boolean/number", "reward")
        traj = entry.get("traj")
        if not isinstance(traj, str) or "### Response:" not in traj:
            raise bad("expected the trajectory text with '### Instruction:' and '### Response:'", "traj")
        question = re.search(r"### Instruction:\s*\n(.*?)\n\s*### Response:", traj, re.DOTALL)
        steps = parse_trajectory(response_part(traj))
        if question is None or not steps:
            raise bad("no question or no Thought/Action steps in the trajectory", "traj")
        prompt = entry.get("prompt") if isinstance(entry.get("prompt"), list) else \
            [{"role": "user", "content": question[1].strip()}]
        out[key] = {**entry, "steps": [vars(s) for s in steps], "prompt": prompt}
    return out


def dpo_pairs_from_files(first: Any, second: Any) -> tuple[list[dict], dict]:
    """The anchor's ``convert_dpo_data.py``: for each question in both files whose rewards differ, the
    rewarded trajectory is chosen, the other rejected. Only finished trajectories count, as only those are
    in the anchor's files (``generation.py:155-163``); ours record unfinished ones too (``finished: false``)."""
    a, b = read_trajectories(first), read_trajectories(second)
    finished = {name: {k: t for k, t in trajs.items() if t.get("finished", True)} for name, trajs in (("a", a), ("b", b))}
    rows = [{"id": k, "samples": [finished["a"][k], finished["b"][k]]} for k in finished["a"] if k in finished["b"]]
    pairs, stats = build_agent_dpo_pairs(rows, 0, None)
    unfinished = len(a) + len(b) - len(finished["a"]) - len(finished["b"])
    return pairs, {**stats, "common_questions": len(rows), "unfinished_skipped": unfinished}


def fireact_export(path: Any, sample: int = 0) -> tuple[dict[str, dict[str, Any]], dict]:
    """Our trajectory rows (an agent rollout JSONL) in FireAct's output form (``generation.py:157-163,
    232-233``): one JSON object keyed by question id, finished trajectories only, each ``{reward, em, f1, gt,
    pred, prompt, traj, traj_by_line}`` with ``reward``/``em`` booleans and ``prompt`` the few-shot text (""
    in the Alpaca format, whose ``traj`` holds the whole prompt) — what the anchor's ``convert_alpaca.py`` and
    ``convert_dpo_data.py`` read. ``sample`` picks one trajectory of a question played several times.
    Those scripts take ``traj_by_line[3]`` as the question and ``traj_by_line[6:]`` as the response, which
    holds only for a one-line question in the Alpaca wrapper: the others are counted. A row that is not a
    trajectory names the file, line and field."""
    from selfplay.errors import DataError
    from selfplay.io import iter_jsonl

    if sample < 0:
        raise ConfigError(f"--sample must be >= 0, got {sample}")
    out: dict[str, dict[str, Any]] = {}
    unfinished = off_layout = 0
    for line, row in enumerate(iter_jsonl(path), start=1):
        trajectories = _trajectories(row)
        if sample >= len(trajectories):
            raise DataError(f"{len(trajectories)} trajectories; no sample {sample}", path=path, line=line,
                            field="samples")
        t = trajectories[sample]
        for field, kind in (("traj", str), ("reward", (bool, int, float)), ("id", (str, int))):
            if not isinstance((row if field == "id" else t).get(field), kind):
                raise DataError("missing or of the wrong type: is this an agent rollout?", path=path, line=line,
                                field=field)
        if not t.get("finished", True):
            unfinished += 1
            continue
        lines = t["traj"].split("\n")
        question = row.get("question") or (t["prompt"][-1]["content"] if isinstance(t.get("prompt"), list) else "")
        if len(lines) < 7 or lines[3] != question or lines[5] != "### Response:":
            off_layout += 1
        out[str(row["id"])] = {"reward": bool(t["reward"]), "em": bool(t.get("em", t["reward"])),
                               "f1": t.get("f1", float(bool(t["reward"]))), "gt": t.get("gt", ""),
                               "pred": t.get("pred", ""), "prompt": "", "traj": t["traj"], "traj_by_line": lines}
    return out, {"exported": len(out), "unfinished_skipped": unfinished, "question_not_on_line_4": off_layout}
