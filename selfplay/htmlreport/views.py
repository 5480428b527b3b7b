"""How one record of a run directory is shown, chosen by the fields the record has — never by a method name.

* collected records (``iter_k/*.jsonl``): a ReAct trajectory (``steps``), a multi-turn episode
  (``turn_history``), K ranked samples (``scores`` / ``win_matrix``), samples beside the real answer
  (``samples``, ``reference``), or a prompt with its real answer (``reference``); anything else as JSON;
* held-out evaluation records (``iter_k/eval/``, ``eval/base/``): greedy answers (``samples.jsonl``),
  multi-turn answers (``multiturn.jsonl``), agent trajectories (``agent.jsonl``).

The iteration's training records that came from a collected record (same id, or the id followed by
``#...``) mark what training used: a pair's chosen and rejected sides, or a kept single turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfplay.htmlreport.charts import heatmap
from selfplay.htmlreport.markup import Html, badge, el, fmt_number, fold, messages, pre

Record = dict[str, Any]
Checker = Callable[[str, Record], "float | None"]  # (answer, held-out record) -> score in [0, 1], None: unknown


def response_text(value: Any) -> str:
    """A training response as text: a string, or a list of ``{"text", "train"}`` segments joined."""
    if isinstance(value, list):
        return "".join(s.get("text", "") if isinstance(s, dict) else str(s) for s in value)
    return value if isinstance(value, str) else ""


@dataclass
class Training:
    """The training records built from one collected record (empty when there are none or no file)."""

    records: list[Record] = field(default_factory=list)
    # Whether the iteration has training records at all (else nothing can be said about this prompt).
    known: bool = False

    def marks(self, text: Any, loose: bool = False) -> list[str]:
        """What training did with ``text``: 'chosen', 'rejected' (a pair's sides) or 'kept' (a single response).

        ``loose``: a side also matches when one text contains the other (a trajectory's rendered text holds
        the prompt and the observations that its training segments split off).
        """
        t = response_text(text).strip()
        if not t:
            return []
        found = []
        for rec in self.records:
            for key, mark in (("chosen", "chosen"), ("rejected", "rejected"), ("response", "kept")):
                side = response_text(rec.get(key)).strip()
                if side and (side == t or (loose and min(len(side), len(t)) >= 20 and (side in t or t in side))):
                    found.append(mark)
        return list(dict.fromkeys(found))

    def note(self) -> Html | None:
        """One line on what training took from this prompt (targets of pairs, rewards of kept turns)."""
        if not self.records:
            return el("div", "no training record from this prompt", class_="muted") if self.known else None
        details = []
        for r in self.records:
            if "chosen_prob" in r or "rejected_prob" in r:
                details.append(f"targets {fmt_number(r.get('chosen_prob'))} / {fmt_number(r.get('rejected_prob'))}")
            elif "reward" in r or "weight" in r:
                details.append(f"reward {fmt_number(r.get('reward', r.get('weight')))}")
        extra = f": {'; '.join(details)}" if details else ""
        return el("div", f"{len(self.records)} training record(s) from this prompt{extra}", class_="muted")


def _marks(marks: list[str]) -> list[Html]:
    return [badge(m, m) for m in marks]


def _card_class(base: str, marks: list[str]) -> str:
    return " ".join([base, *marks[:1]])


# --------------------------------------------------------------------------- collected records


def samples_view(r: Record, training: Training) -> Html:
    """The real answer beside the model's own samples (what SPIN pairs)."""
    finish = r.get("finish_reasons") or []
    gens = [el("div", el("div", f"generated {i}", el("span", f" ({finish[i]})", class_="muted") if i < len(finish)
                         else None, *_marks(training.marks(s)), class_="label"), pre(s),
               class_=_card_class("cand", training.marks(s)))
            for i, s in enumerate(r.get("samples") or [])]
    if r.get("reference") is None:
        return el("div", messages(r.get("prompt_messages")), el("div", gens, class_="cands"))
    real_marks = training.marks(r["reference"])
    real = el("div", el("div", "real (SFT answer)", *_marks(real_marks), class_="label"), pre(r["reference"]),
              class_=_card_class("cand", real_marks))
    return el("div", messages(r.get("prompt_messages")), el("div", real, el("div", gens), class_="side"))


def ranked_view(r: Record, training: Training) -> Html:
    """K samples with their scores, the win matrix as a heat map, the chosen and rejected sample marked."""
    samples = r.get("samples") or []
    scores = r.get("scores") or []
    marks = {i: training.marks(s) for i, s in enumerate(samples)}
    cards = []
    for i, s in enumerate(samples):
        score = f"score {fmt_number(scores[i], '{:.4g}')}" if i < len(scores) else None
        row_mean = None
        matrix = r.get("win_matrix")
        if isinstance(matrix, list) and i < len(matrix) and matrix[i]:
            row_mean = f"mean P(win) {fmt_number(sum(matrix[i]) / len(matrix[i]), '{:.3f}')}"
        cards.append(el("div", el("div", f"sample {i}", el("span", f" · {score}" if score else "",
                                                            f" · {row_mean}" if row_mean else "", class_="muted"),
                                  *_marks(marks[i]), class_="label"), pre(s), class_=_card_class("cand", marks[i])))
    hm = heatmap(r.get("win_matrix") or [], {i: m[0] for i, m in marks.items() if m and m[0] != "kept"},
                 title=f"win matrix ({r.get('judge', 'judge')}): row beats column")
    right = el("div", el("div", "win matrix: P(row beats column)", class_="label"), hm) if hm else None
    ref = fold("reference answer", pre(r["reference"])) if r.get("reference") else None
    judge = el("div", f"judge {r['judge']}", class_="muted") if r.get("judge") else None
    return el("div", messages(r.get("prompt_messages")), judge,
              el("div", el("div", cards, class_="cands"), right, class_="ranked"), ref)


def episode_view(r: Record, training: Training) -> Html:
    """A multi-turn self-correction episode turn by turn: answer, reward, feedback; kept turns marked."""
    th = r.get("turn_history") or {}
    actions, rewards = th.get("best_actions") or [], th.get("best_rewards") or []
    observations = th.get("best_observations") or []
    head = el("div", el("span", "gold answer ", class_="label"), str(r.get("answer", "–")),
              el("span", f" · best reward {fmt_number(r.get('max_reward'))}", class_="muted"))
    turns = []
    for i, action in enumerate(actions):
        reward = rewards[i] if i < len(rewards) else None
        m = training.marks(action)
        cands = (th.get("actions") or {}).get(str(i)) or []
        cand_rewards = (th.get("rewards") or {}).get(str(i)) or []
        cand_block = fold(f"{len(cands)} candidate(s) at this turn",
                          [el("div", el("div", f"candidate {j} · reward {fmt_number(cand_rewards[j]) if j < len(cand_rewards) else '–'}",
                                        class_="label"), pre(c)) for j, c in enumerate(cands)]) if len(cands) > 1 else None
        feedback = (el("div", el("div", "feedback", class_="label"), pre(observations[i], class_="text muted"))
                    if i < len(observations) and observations[i] and reward != 1.0 else None)
        kind = "ok" if reward == 1.0 else "bad" if reward is not None else ""
        turns.append(el("div", el("div", f"turn {i + 1}", badge(f"reward {fmt_number(reward)}", kind), *_marks(m),
                                  class_="label"), pre(action), cand_block, feedback,
                        class_="turn" + (" kept" if "kept" in m else "")))
    start = fold("prompt (conversation before turn 1)", messages(r.get("prompt"))) if r.get("prompt") else None
    question = el("div", el("div", "question", class_="label"), pre(r.get("query", "")))
    return el("div", question, head, start, turns)


def _steps(steps: list[Any]) -> list[Html]:
    out = []
    for i, s in enumerate(steps):
        s = s if isinstance(s, dict) else {"thought": str(s)}
        body = [el("div", el("div", part, class_="label"), pre(s.get(part, "")))
                for part in ("thought", "action", "observation") if part in s]
        out.append(fold(f"step {i + 1}: {str(s.get('action', ''))[:160]}", body, class_="step"))
    return out


def _trajectory_summary(t: Record) -> Html:
    reward = t.get("reward")
    kind = "ok" if reward is True or (isinstance(reward, (int, float)) and reward >= 1) else "bad"
    stats = " · ".join(f"{k} {fmt_number(t[k])}" for k in ("em", "f1", "num_steps", "tool_errors") if k in t)
    return el("div", badge(f"reward {fmt_number(reward)}", kind),
              el("span", f" predicted: {t.get('pred', '')!s} · {stats}", class_="muted"))


def trajectory_view(r: Record, training: Training) -> Html:
    """An agent's ReAct trajectory step by step (thought, action, observation folded) with its reward."""
    runs = r.get("samples") if isinstance(r.get("samples"), list) and r["samples"] else [r]
    parts = [el("div", el("div", "question", class_="label"), pre(r.get("question", "")),
                el("div", el("span", "gold answer ", class_="label"), str(r.get("gt", "–"))))]
    for j, t in enumerate(runs):
        m = training.marks(t.get("traj", ""), loose=True)
        title = f"trajectory {j}" if len(runs) > 1 else "trajectory"
        parts.append(el("div", el("div", title, *_marks(m), class_="label"), _trajectory_summary(t),
                        _steps(t.get("steps") or []), class_=_card_class("cand", m)))
    if r.get("reference"):
        m = training.marks(r["reference"], loose=True)
        parts.append(fold(el("span", "real trajectory (SFT data)", *_marks(m)), pre(r["reference"])))
    return el("div", parts)


def reference_view(r: Record, training: Training) -> Html:
    """A prompt with its real answer (methods that train on the SFT data itself)."""
    m = training.marks(r.get("reference"))
    return el("div", messages(r.get("messages") or r.get("prompt_messages")),
              el("div", el("div", "real answer", *_marks(m), class_="label"), pre(r.get("reference"))))


def raw_view(r: Record, training: Training) -> Html:
    return pre(r)


@dataclass(frozen=True)
class RecordView:
    """Shows a record when ``matches`` says its fields are the ones ``render`` reads."""

    name: str
    matches: Callable[[Record], bool]
    render: Callable[[Record, Training], Html]


RECORD_VIEWS: tuple[RecordView, ...] = (
    RecordView("trajectory", lambda r: isinstance(r.get("steps"), list), trajectory_view),
    RecordView("episode", lambda r: isinstance(r.get("turn_history"), dict), episode_view),
    RecordView("ranked", lambda r: "win_matrix" in r or "scores" in r, ranked_view),
    RecordView("samples", lambda r: isinstance(r.get("samples"), list), samples_view),
    RecordView("reference", lambda r: "reference" in r, reference_view),
)


def _safely(render: Callable[[], Html], r: Record, name: str) -> Html:
    """A record whose fields have unexpected types is shown as JSON, saying so: one odd line of a JSONL must
    not stop the loop that writes the report after every iteration."""
    try:
        return render()
    except Exception as e:  # noqa: BLE001 (any failure of a view falls back to the raw record)
        return el("div", el("div", f"shown as JSON: the {name} view failed ({type(e).__name__}: {e})",
                            class_="muted"), raw_view(r, Training()))


def render_record(r: Record, training: Training) -> Html:
    view = next((v for v in RECORD_VIEWS if v.matches(r)), None)
    body = _safely(lambda: view.render(r, training), r, view.name) if view else raw_view(r, training)
    return el("div", el("div", f"prompt {r.get('id', '?')}", class_="head"), training.note(), body, class_="record")


# --------------------------------------------------------------------------- held-out evaluation records


def _verdict(score: float | None) -> Html | None:
    if score is None:
        return None
    if score >= 1.0:
        return badge("correct", "ok")
    return badge("incorrect", "bad") if score <= 0.0 else badge(f"score {score:.2f}", "")


def answers_view(row: Record, held: Record | None, check: Checker | None) -> Html:
    """A greedy answer to a held-out prompt, marked correct or incorrect by the task's verifier."""
    score = row.get("correct")
    if score is None and check is not None and held is not None:
        score = check(str(row.get("answer", "")), held)
    score = float(score) if isinstance(score, (bool, int, float)) else None
    kind = "" if score is None else "ok" if score >= 1.0 else "bad"
    prompt = messages(held.get("messages")) if held else None
    ref = fold("real answer", pre(held.get("reference"))) if held and held.get("reference") else None
    logps = " · ".join(f"{k} {fmt_number(row[k], '{:.2f}')}" for k in ("answer_logp", "real_logp") if k in row)
    return el("div", prompt, ref, el("div", el("div", "greedy answer", _verdict(score),
                                               el("span", f" {logps}", class_="muted"), class_="label"),
                                     pre(row.get("answer", "")), class_=f"answer {kind}".strip()))


def multiturn_view(row: Record, held: Record | None, check: Checker | None) -> Html:
    """RISE's held-out evaluation: the sequential turns with their rewards, the parallel samples folded."""
    parts = [messages(held.get("messages"))] if held else []
    for key, title, open_ in (("sequential", "turn", True), ("parallel", "sample", False)):
        block = row.get(key) or {}
        answers, rewards = block.get("answers") or [], block.get("rewards") or []
        cards = [el("div", el("div", f"{title} {i + 1}", _verdict(rewards[i] if i < len(rewards) else None),
                              class_="label"), pre(a),
                        class_="turn answer " + ("ok" if i < len(rewards) and rewards[i] >= 1 else "bad"))
                 for i, a in enumerate(answers)]
        if cards:
            parts.append(fold(f"{key}: {sum(1 for x in rewards if x >= 1)} of {len(rewards)} correct", cards,
                              open_=open_))
    return el("div", parts)


def agent_answer_view(row: Record, held: Record | None, check: Checker | None) -> Html:
    """A held-out agent episode, marked correct or incorrect by its exact match (else its reward)."""
    score = row.get("em", row.get("reward"))
    score = float(score) if isinstance(score, (bool, int, float)) else None
    return el("div", el("div", "greedy episode", _verdict(score), class_="label"), trajectory_view(row, Training()))


@dataclass(frozen=True)
class EvalView:
    """A file of an evaluation directory and how one of its rows is shown."""

    file: str
    title: str
    render: Callable[[Record, "Record | None", "Checker | None"], Html]


EVAL_VIEWS: tuple[EvalView, ...] = (
    EvalView("samples.jsonl", "greedy answers", answers_view),
    EvalView("multiturn.jsonl", "multi-turn answers", multiturn_view),
    EvalView("agent.jsonl", "agent trajectories", agent_answer_view),
)


def render_eval_row(view: EvalView, row: Record, held: Record | None, check: Checker | None) -> Html:
    body = _safely(lambda: view.render(row, held, check), row, view.title)
    return el("div", el("div", f"prompt {row.get('id', '?')}", class_="head"), body, class_="record")
