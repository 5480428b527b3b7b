"""RISE (Recursive Introspection, arXiv 2407.18219): learn to improve one's previous answer over turns.

An iteration collects multi-turn episodes in an answer environment (:mod:`selfplay.stages.rollout`): each
turn the best of n_t candidates (by the environment's reward) becomes the answer, and a wrong answer is
followed by "The answer is incorrect. Please try again." until an answer is right or the turns run out.
This module turns episodes into weighted training turns, as the anchor's ``workflow_convert.py`` does:
each kept turn is a training record whose prompt is the conversation up to it (context, never trained)
and whose response is that turn's answer, weighted by its reward (reward-weighted regression, loss
``rwr``). Criteria for which turns are kept:

* ``all`` — every turn; ``better`` — a turn whose reward beats the previous turn's; ``best`` — a turn no
  earlier turn beat; ``success`` — only correct turns. The first turn is kept by every criterion but
  ``success``; an episode ends at its first correct turn.

Episodes are read in our JSONL form or in the anchor's log form (``{idx: {query, dialogue, turn_history:
{best_actions, best_observations, best_rewards, actions, rewards, observations}, max_reward}}``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from selfplay.errors import ConfigError, DataError
from selfplay.methods.base import Method

Messages = list[dict[str, str]]
CRITERIA = ("all", "better", "best", "success")


def _dedupe(actions: list[str], observations: list[str], rewards: list[float]) -> tuple[list, list, list]:
    """The anchor's ``--remove_duplication``: drop empty answers and answers seen before (with their
    feedback and reward)."""
    seen: set[str] = set()
    kept = []
    for a, o, r in zip(actions, observations, rewards):
        a = a.strip()
        if a and a not in seen:
            seen.add(a)
            kept.append((a, o, r))
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


def keep_turn(i: int, rewards: list[float], criteria: str) -> bool:
    """Whether turn ``i`` (0-based) of an episode with ``rewards`` becomes a training record."""
    if criteria == "success":
        return rewards[i] == 1.0
    if i == 0 or criteria == "all":
        return True
    if criteria == "better":
        return rewards[i] > rewards[i - 1]
    if criteria == "best":
        return all(rewards[i] >= rewards[j] for j in range(i))
    raise ConfigError(f"unknown RISE criteria '{criteria}'; choose one of {', '.join(CRITERIA)}")


def convert_episode(start: Messages, episode: dict[str, Any], criteria: str,
                    remove_duplicates: bool) -> list[tuple[Messages, str, float]]:
    """(context messages, answer, reward) for every kept turn of one episode; ``start`` is the conversation
    the first answer replied to (the one-shot example and the question). A blank answer (kept by
    ``remove_duplicates=False``) stays in the context of later turns but is never a training turn: there
    is nothing in it to learn, and training refuses an empty response."""
    history = episode["turn_history"]
    actions, observations, rewards = (list(history[k]) for k in ("best_actions", "best_observations",
                                                                 "best_rewards"))
    if remove_duplicates:
        actions, observations, rewards = _dedupe(actions, observations, rewards)
    kept = []
    conversation = list(start)
    for i, (action, observation, reward) in enumerate(zip(actions, observations, rewards)):
        if keep_turn(i, rewards, criteria) and action.strip():
            kept.append((list(conversation), action, float(reward)))
        if reward == 1.0:
            break
        conversation += [{"role": "assistant", "content": action}, {"role": "user", "content": observation}]
    return kept


def build_rise_examples(episodes: list[dict[str, Any]], iteration: int, cfg: Any) -> tuple[list[dict], dict]:
    """Weighted single-response records ``{id, prompt, response, reward}`` from one iteration's episodes."""
    from selfplay.envs.answer_envs import get_env

    records, kept_per_turn, blank = [], {}, 0
    unsolved = [ep for ep in episodes if ep.get("max_reward") != 1.0]
    for ep in episodes:
        if cfg.rise.only_success and ep.get("max_reward") != 1.0:
            continue  # the anchor's --only_success: episodes never solved give no turns
        blank += sum(1 for a in ep["turn_history"]["best_actions"] if not a.strip())
        start = ep.get("prompt") or get_env(ep.get("env") or cfg.rise.env, cfg.rise.rewards).reset(
            {"messages": [{"role": "user", "content": ep["query"]}], "reference": ep.get("answer", "")})
        for context, action, reward in convert_episode(start, ep, cfg.rise.criteria, cfg.rise.remove_duplicates):
            turn = (len(context) - len(start)) // 2
            kept_per_turn[turn] = kept_per_turn.get(turn, 0) + 1
            records.append({"id": f"{ep['id']}#t{turn}@it{iteration}", "prompt": context, "response": action,
                            "reward": reward})
    if cfg.rise.shuffle:
        random.Random(cfg.seed + iteration).shuffle(records)
    stats = {"episodes": len(episodes), "solved": len(episodes) - len(unsolved), "examples": len(records),
             "kept_per_turn": {str(t): n for t, n in sorted(kept_per_turn.items())},
             "mean_reward": sum(r["reward"] for r in records) / len(records) if records else None,
             "skipped_unsolved": len(unsolved) if cfg.rise.only_success else 0,
             "blank_answers_not_trained": blank}
    return records, stats


def read_episodes(path: Path) -> list[dict[str, Any]]:
    """Episodes from our rollout JSONL or the anchor's JSON log; a broken entry names the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        from selfplay.io import read_jsonl

        entries = [(str(row.get("id", f"line {i}")), row) for i, row in enumerate(read_jsonl(path), start=1)]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", path=path, line=e.lineno) from None
        items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
        if items is None:
            raise DataError("expected a JSON object of episodes keyed by index (the RISE log) or a list", path=path)
        entries = [(str(k), v) for k, v in items]
    episodes = []
    for key, ep in entries:
        episodes.append(_check_episode(ep, path, key))
    if not episodes:
        raise DataError("no episodes in the file", path=path)
    return episodes


def _check_episode(ep: Any, path: Path, key: str) -> dict[str, Any]:
    def bad(message: str, field: str) -> DataError:
        return DataError(f"entry '{key}': {message}", path=path, field=field)

    if not isinstance(ep, dict):
        raise bad(f"expected an object, got {type(ep).__name__}", "<entry>")
    if not isinstance(ep.get("query"), str) and not ep.get("prompt"):
        raise bad("missing the question", "query")
    history = ep.get("turn_history")
    if not isinstance(history, dict):
        raise bad("missing or not an object", "turn_history")
    lists = {}
    for field in ("best_actions", "best_observations", "best_rewards"):
        value = history.get(field)
        if not isinstance(value, list):
            raise bad("expected a list", f"turn_history.{field}")
        lists[field] = value
    if not all(isinstance(a, str) for a in lists["best_actions"]):
        raise bad("every answer must be a string", "turn_history.best_actions")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in lists["best_rewards"]):
        raise bad("every reward must be a number (1 / 0 / -1)", "turn_history.best_rewards")
    n_actions, n_rewards = len(lists["best_actions"]), len(lists["best_rewards"])
    n_obs = len(lists["best_observations"])
    if n_actions != n_rewards or n_obs not in (n_actions, n_actions - 1):
        raise bad(f"{n_actions} answers, {n_rewards} rewards and {n_obs} observations do not match", "turn_history")
    return {**ep, "id": str(ep.get("id", ep.get("task_id", key)))}


def _check(cfg: Any) -> None:
    from selfplay.envs.answer_envs import ENVS, RULES
    from selfplay.errors import suggest

    r = cfg.rise
    if r.env != "auto" and r.env not in ENVS:
        raise ConfigError(f"rise.env '{r.env}' is not an environment.{suggest(r.env, ENVS)} "
                          f"Choose auto or one of {', '.join(ENVS)}.")
    rules = ("selfplay", *ENVS[r.env].task.rise_variants) if r.env != "auto" else RULES
    if r.rewards not in rules:
        raise ConfigError(f"rise.rewards '{r.rewards}' is not a rule of {'the ' + r.env if r.env != 'auto' else 'any'} "
                          f"environment.{suggest(r.rewards, rules)} Choose one of {', '.join(rules)}.")
    if r.max_turns < 1 or r.eval_turns < 1:
        raise ConfigError(f"rise.max_turns and rise.eval_turns must be at least 1, got {r.max_turns}, {r.eval_turns}")
    if not r.num_samples or any(n < 1 for n in r.num_samples):
        raise ConfigError(f"rise.num_samples needs one count >= 1 per turn, got {r.num_samples}")
    if not r.models or any(not m.strip() for m in r.models):
        raise ConfigError(f"rise.models needs a model per turn ('policy', a path or a URL), got {r.models}")
    if r.context_window < 1:
        raise ConfigError(f"rise.context_window must be at least 1, got {r.context_window}")
    if r.eval_parallel < 0:
        raise ConfigError(f"rise.eval_parallel must be >= 0, got {r.eval_parallel}")


METHOD = Method(
    name="rise",
    summary="multi-turn self-correction: the improved turn, reward-weighted (arXiv 2407.18219)",
    collects="turns",
    build=build_rise_examples,
    objective="likelihood",
    default_loss="rwr",
    # The anchor's training settings (README, finetune_deepspeed.sh); the loop's RMSProp default is SPIN's.
    preset={"train": {"lr": 1e-5, "optimizer": "adamw", "scheduler": "cosine", "warmup_ratio": 0.04,
                      "batch_size": 1, "grad_accum": 16, "max_length": 2048, "max_prompt_length": 1536,
                      "epochs": 1.0},
            "generate": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 1000},
            "loop": {"mix_previous": False}},
    names=("response", "response"),
    columns=(("mt_acc_t1", "acc@t1", "{:.3f}"), ("mt_acc_tlast", "acc@tT", "{:.3f}"),
             ("mt_oracle", "oracle@T", "{:.3f}"), ("mt_majority", "maj@T", "{:.3f}"),
             ("mt_fixed", "wrong@t1→right@tT", "{:.3f}"), ("mt_broken", "right@t1→wrong@tT", "{:.3f}"),
             ("mt_pass_parallel", "pass@n", "{:.3f}"), ("mt_maj_parallel", "maj@n", "{:.3f}")),
    evaluations=("multiturn",),
    target_metric="mt_acc_tlast",
    check=_check,
)


# --------------------------------------------------------------------------- the anchor's file formats

_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


def anchor_finetune_rows(records: list[dict[str, Any]], temperature: float) -> list[dict[str, Any]]:
    """Training turns as the anchor's ``finetune.json`` (``workflow_convert.py:171-188``): ShareGPT
    ``{id: identity_i, conversations: [{from, value, loss}]}``, every message's ``loss`` 0.0 but the trained
    last one's, ``exp(reward / temperature)`` (:153-156) — what its FastChat trainer weighs each sample by."""
    import math

    rows = []
    for i, rec in enumerate(records):
        messages = [*rec["prompt"], {"role": "assistant", "content": rec["response"]}]
        conversation = [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"], "loss": 0.0} for m in messages]
        conversation[-1]["loss"] = math.exp(float(rec["reward"]) / temperature)
        rows.append({"id": f"identity_{i}", "conversations": conversation})
    return rows


def anchor_log(episodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Episodes as the anchor's rollout log (``workflow_gen.py:154-164``), keyed by position: ``{i: {task_id,
    query, answer, max_reward, turn_history, dialogue}}`` (plus our ``id``), which ``workflow_convert.py``
    and ``selfplay rollout convert`` read."""
    log = {}
    for i, ep in enumerate(episodes):
        log[str(i)] = {"task_id": i, "id": ep["id"], "query": ep["query"], "answer": ep.get("answer", ""),
                       "max_reward": ep.get("max_reward"), "turn_history": ep["turn_history"],
                       "dialogue": ep.get("dialogue", [])}
    return log
