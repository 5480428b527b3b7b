"""Readers for the real data formats: detect a row's format from its fields and turn it into canonical
SFT records ``{id, messages: [prompt turns ending with a user turn], reference, meta}``.

:data:`FORMATS` is checked in order by ``--format auto``; the first format whose ``detect`` accepts
the first row wins, so more specific formats come first (UltraFeedback rows have ``messages`` *and*
``chosen``/``rejected`` and are pairs; UltraChat rows have ``prompt`` *and* ``messages``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selfplay.data.schema import RowRef, check_messages, get_list, get_text, validate_sft_record
from selfplay.data.answers import extract_gsm8k_answer, last_boxed
from selfplay.errors import UserError, suggest

TURN_CHOICES = ("first", "last", "all")

Record = dict[str, Any]


@dataclass(frozen=True)
class ConvertOptions:
    """``turns``: which assistant turns of a conversation become examples; ``stem``: default id prefix."""

    turns: str
    stem: str


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[dict[str, Any], RowRef, ConvertOptions], list[Record]]
    # Default for --turns: the first answer of a chat, the compared (last) answer of a pair.
    default_turns: str = "first"


def _base_id(row: dict[str, Any], ref: RowRef, opts: ConvertOptions, *fields: str) -> str:
    """The row's own id (first present of ``fields``, else its key) or ``<stem>-<index>``."""
    for field in fields:
        value = row.get(field)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return ref.key if ref.key is not None else f"{opts.stem}-{ref.index}"


def _record(id_: str, prompt: str | list[dict[str, str]], reference: str, meta: dict[str, Any]) -> Record:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return {"id": id_, "messages": messages, "reference": reference, "meta": meta}


def _conversation_records(messages: list[dict[str, str]], field: str, base_id: str, ref: RowRef,
                          opts: ConvertOptions, meta: dict[str, Any]) -> list[Record]:
    """One record per selected assistant turn; its prompt is the whole history before it."""
    answers = [i for i, m in enumerate(messages)
               if m["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user"]
    if not answers:
        raise ref.error("no assistant turn that answers a user turn", field)
    numbered = list(enumerate(answers, start=1))
    picked = {"first": numbered[:1], "last": numbered[-1:], "all": numbered}[opts.turns]
    records = []
    for turn, i in picked:
        record_id = f"{base_id}-t{turn}" if opts.turns == "all" else base_id
        records.append(_record(record_id, messages[:i], messages[i]["content"],
                               {**meta, "turn": turn, "num_turns": len(answers)}))
    return records


# --------------------------------------------------------------------------- chat formats


def _convert_sft(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    return [validate_sft_record(row, ref)]


def _convert_messages(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    messages = check_messages(row.get("messages"), "messages", ref)
    base = _base_id(row, ref, opts, "id", "prompt_id")
    return _conversation_records(messages, "messages", base, ref, opts, {"task": "chat"})


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                   "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}


def _convert_sharegpt(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    """ShareGPT conversations. Messages that carry a ``loss`` weight (the RISE anchor's ``finetune.json``,
    read by its FastChat trainer) make the conversation weighted: only assistant turns with a non-zero
    weight become records (FastChat masks a message whose loss is 0.0), each with ``meta.weight``."""
    turns = get_list(row, "conversations", ref)
    messages, weights = [], []
    system = get_text(row, "system", ref, required=False, allow_empty=True)
    if system:
        messages.append({"role": "system", "content": system})
        weights.append(None)
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise ref.error(f"expected an object, got {type(turn).__name__}", where)
        speaker = turn.get("from")
        if speaker not in _SHAREGPT_ROLES:
            raise ref.error(f"unknown speaker {speaker!r}; expected one of {', '.join(_SHAREGPT_ROLES)}",
                            where + ".from")
        if not isinstance(turn.get("value"), str):
            raise ref.error(f"expected a string, got {type(turn.get('value')).__name__}", where + ".value")
        messages.append({"role": _SHAREGPT_ROLES[speaker], "content": turn["value"]})
        weights.append(_loss_weight(turn, ref, where))
    base = _base_id(row, ref, opts, "id")
    if all(w is None for w in weights):
        return _conversation_records(messages, "conversations", base, ref, opts, {"task": "chat"})
    trained = [i for i, w in enumerate(weights) if messages[i]["role"] == "assistant" and w]
    if not trained:
        raise ref.error("no assistant message has a non-zero 'loss' weight: nothing to train", "conversations")
    numbered = list(enumerate(trained, start=1))
    picked = {"first": numbered[:1], "last": numbered[-1:], "all": numbered}[opts.turns]
    records = []
    for turn, i in picked:
        if messages[i - 1]["role"] != "user":
            raise ref.error("a weighted assistant message must answer a user message", f"conversations[{i}]")
        record_id = f"{base}-t{turn}" if opts.turns == "all" else base
        records.append(_record(record_id, messages[:i], messages[i]["content"],
                               {"task": "chat", "weight": weights[i], "turn": turn, "num_turns": len(trained)}))
    return records


def _loss_weight(turn: dict[str, Any], ref: RowRef, where: str) -> float | None:
    """A message's ``loss`` weight (None when it has none); a non-number or a non-finite one is an error."""
    if "loss" not in turn:
        return None
    value = turn["loss"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ref.error(f"expected a finite number, got {value!r}", where + ".loss")
    return float(value)


def _prompt_messages(row: dict[str, Any], ref: RowRef) -> list[dict[str, str]]:
    """A row's separate ``prompt``: a message list or one user turn."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        return check_messages(prompt, "prompt", ref)
    return [{"role": "user", "content": get_text(row, "prompt", ref)}]


def _pair_side(row: dict[str, Any], field: str, ref: RowRef) -> list[dict[str, str]]:
    """One side of a pair as a whole conversation: a message list (with the row's ``prompt`` in front
    when the list holds only the answer, as in TRL's preference format), or an answer string."""
    value = row.get(field)
    if isinstance(value, str):
        return [*_prompt_messages(row, ref), {"role": "assistant", "content": value}]
    messages = check_messages(value, field, ref)
    if messages[0]["role"] == "assistant" and "prompt" in row:
        return [*_prompt_messages(row, ref), *messages]
    return messages


def _convert_spin(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    real, fake = ("real", "generated") if "real" in row else ("chosen", "rejected")
    messages = _pair_side(row, real, ref)
    records = _conversation_records(messages, real, _base_id(row, ref, opts, "id", "prompt_id"), ref,
                                    opts, {"task": "chat"})
    rejected = [m["content"] for m in _pair_side(row, fake, ref) if m["role"] == "assistant"]
    for record in records:
        if rejected and record["meta"]["turn"] == record["meta"]["num_turns"]:
            record["meta"][fake] = rejected[-1]  # the answer the pair compares against
    return records


def _convert_alpaca(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    instruction = get_text(row, "instruction", ref)
    extra = get_text(row, "input", ref, required=False, allow_empty=True)
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    output = get_text(row, "output", ref)
    return [_record(_base_id(row, ref, opts, "id"), prompt, output, {"task": "chat"})]


def _convert_prompt_response(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    field = "response" if "response" in row else "completion"
    value = row.get(field)
    if isinstance(value, list):  # TRL conversational prompt-completion: the completion is messages
        answers = [m["content"] for m in check_messages(value, field, ref) if m["role"] == "assistant"]
        if not answers:
            raise ref.error("no assistant message", field)
        response = answers[0]
    else:
        response = get_text(row, field, ref)
    prompt = _prompt_messages(row, ref)
    return [_record(_base_id(row, ref, opts, "id", "prompt_id"), prompt, response, {"task": "chat"})]


# --------------------------------------------------------------------------- task formats


def _convert_gsm8k(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    question = get_text(row, "question", ref)
    solution = get_text(row, "answer", ref)
    answer = extract_gsm8k_answer(solution) if "####" in solution else None
    if answer is None:
        raise ref.error("expected a solution ending with '#### <number>'", "answer")
    return [_record(_base_id(row, ref, opts, "id"), question, solution, {"task": "gsm8k", "answer": answer})]


def _convert_math(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    problem = get_text(row, "problem", ref)
    solution = get_text(row, "solution", ref)
    answer = last_boxed(solution)
    if answer is None:
        raise ref.error("expected a solution with a final \\boxed{} answer", "solution")
    meta: dict[str, Any] = {"task": "math", "answer": answer}
    for field in ("level", "type", "subject", "unique_id"):
        if isinstance(row.get(field), (str, int)):
            meta[field] = row[field]
    return [_record(_base_id(row, ref, opts, "id", "unique_id"), problem, solution, meta)]


def _convert_hotpotqa(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    question = get_text(row, "question", ref)
    answer = get_text(row, "answer", ref)
    meta: dict[str, Any] = {"task": "hotpotqa", "answer": answer}
    for field in ("type", "level"):
        if isinstance(row.get(field), str):
            meta[field] = row[field]
    return [_record(_base_id(row, ref, opts, "_id", "id"), question, answer, meta)]


def _convert_bamboogle(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    """Bamboogle as FireAct ships it (``data/bamboogle/test.csv``: ``Question``, ``Answer``)."""
    question = get_text(row, "Question", ref)
    answer = get_text(row, "Answer", ref)
    return [_record(_base_id(row, ref, opts, "id"), question, answer, {"task": "bamboogle", "answer": answer})]


def _convert_strategyqa(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    """StrategyQA (``strategyqa_{train,dev,test}.json``: ``qid``, ``question``, ``answer`` a boolean): the
    gold is stored as "yes" / "no"."""
    question = get_text(row, "question", ref)
    if not isinstance(row.get("answer"), bool):
        raise ref.error(f"expected true or false, got {row.get('answer')!r}", "answer")
    answer = "yes" if row["answer"] else "no"
    meta: dict[str, Any] = {"task": "strategyqa", "answer": answer}
    for field in ("term", "description", "facts"):
        if field in row:
            meta[field] = row[field]
    return [_record(_base_id(row, ref, opts, "qid", "id"), question, answer, meta)]


_LETTERS = ("A", "B", "C", "D")


def _convert_mmlu(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    """MMLU: the header-less CSVs (question, A, B, C, D, answer letter; FireAct's ``data/mmlu``) or the hub's
    rows (``question``, ``choices``, ``answer`` an index). The prompt is the anchor's
    ``"Question: {}\nA. {}\nB. {}\nC. {}\nD. {}"`` (ReinholdM/SPIN ``spin/tasks/mmlu.py:18``); the gold is the letter."""
    question = get_text(row, "question", ref)
    if isinstance(row.get("choices"), list):
        choices, answer = row["choices"], row.get("answer")
        if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise ref.error("expected four answer strings", "choices")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < 4:
            raise ref.error(f"expected the index 0-3 of the right choice, got {answer!r}", "answer")
        letter = _LETTERS[answer]
    else:
        choices = [get_text(row, letter, ref, allow_empty=True) or "" for letter in _LETTERS]
        letter = (get_text(row, "answer", ref) or "").strip()
        if letter not in _LETTERS:
            raise ref.error(f"expected an answer letter A-D, got {letter!r}", "answer")
    prompt = "Question: {}\nA. {}\nB. {}\nC. {}\nD. {}".format(question, *choices)
    meta: dict[str, Any] = {"task": "mmlu", "answer": letter, "choices": choices}
    if isinstance(row.get("subject"), str):
        meta["subject"] = row["subject"]
    return [_record(_base_id(row, ref, opts, "id"), prompt, letter, meta)]


# The FireAct trajectory text is an Alpaca prompt followed by the ReAct response.
_ALPACA_TRAJECTORY = re.compile(
    r"### Instruction:\s*\n(?P<prompt>.*?)\n\s*### Response:[ \t]*\n?(?P<response>.*)", re.DOTALL)


def _convert_fireact(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    trajectory = get_text(row, "traj", ref)
    match = _ALPACA_TRAJECTORY.search(trajectory)
    if match is None:
        raise ref.error("expected '### Instruction:' and '### Response:' sections", "traj")
    gold = row.get("gt")
    if not isinstance(gold, str):
        raise ref.error(f"expected a string, got {type(gold).__name__}", "gt")
    meta: dict[str, Any] = {"task": "hotpotqa", "answer": gold}
    meta.update({k: row[k] for k in ("reward", "em", "f1", "gt", "pred") if k in row})
    prompt, response = match["prompt"].strip(), match["response"].rstrip()
    return [_record(_base_id(row, ref, opts, "id"), prompt, response, meta)]


def _convert_mt_bench(row: dict[str, Any], ref: RowRef, opts: ConvertOptions) -> list[Record]:
    turns = get_list(row, "turns", ref)
    for i, turn in enumerate(turns):
        if not isinstance(turn, str):
            raise ref.error(f"expected a string, got {type(turn).__name__}", f"turns[{i}]")
    question_id = row.get("question_id")
    if not isinstance(question_id, (int, str)) or isinstance(question_id, bool):
        raise ref.error(f"expected an integer or string, got {type(question_id).__name__}", "question_id")
    references = row.get("reference") or []
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise ref.error("expected a list of strings", "reference")
    meta: dict[str, Any] = {"task": "mt_bench", "question_id": question_id, "turns": turns}
    category = get_text(row, "category", ref, required=False)
    if category is not None:
        meta["category"] = category
    if references:
        meta["reference"] = references
    # The prompt is turn 1: later turns need the model's own earlier answers, so they live in meta.
    return [_record(str(question_id), turns[0], references[0] if references else "", meta)]


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("fireact", "FireAct agent trajectories {idx: {reward, em, f1, gt, pred, traj, ...}}",
           lambda r: "traj" in r and "gt" in r, _convert_fireact),
    Format("mt_bench", "MT-Bench questions {question_id, category, turns, reference?}",
           lambda r: "question_id" in r and "turns" in r, _convert_mt_bench),
    Format("sft", "canonical SFT records {id, messages, reference, meta}",
           lambda r: "messages" in r and "reference" in r and "id" in r, _convert_sft),
    Format("spin", "SPIN/DPO pairs: real/generated or chosen/rejected message lists",
           lambda r: ("real" in r and "generated" in r) or ("chosen" in r and "rejected" in r),
           _convert_spin, default_turns="last"),
    Format("messages", "chat messages (UltraChat: prompt, prompt_id, messages)",
           lambda r: "messages" in r, _convert_messages),
    Format("sharegpt", "ShareGPT conversations of {from, value, loss?} (loss: RISE's finetune.json weights)",
           lambda r: "conversations" in r,
           _convert_sharegpt),
    Format("alpaca", "Alpaca {instruction, input, output}", lambda r: "instruction" in r and "output" in r,
           _convert_alpaca),
    Format("gsm8k", "GSM8K {question, answer ending in '#### n'}",
           lambda r: "question" in r and isinstance(r.get("answer"), str) and "####" in r["answer"],
           _convert_gsm8k),
    Format("math", "MATH {problem, solution with \\boxed{}}", lambda r: "problem" in r and "solution" in r,
           _convert_math),
    Format("strategyqa", "StrategyQA {qid, question, answer: true|false}",
           lambda r: "question" in r and isinstance(r.get("answer"), bool), _convert_strategyqa),
    Format("mmlu", "MMLU: header-less CSV (question, A-D, answer letter) or {question, choices, answer index}",
           lambda r: "question" in r and ({"A", "B", "C", "D"} <= set(r) or isinstance(r.get("choices"), list)),
           _convert_mmlu),
    Format("bamboogle", "Bamboogle {Question, Answer} (FireAct's test.csv)", lambda r: "Question" in r and "Answer" in r,
           _convert_bamboogle),
    Format("hotpotqa", "HotpotQA {question, answer, type}", lambda r: "question" in r and "answer" in r,
           _convert_hotpotqa),
    Format("prompt_response", "plain {prompt, response|completion}",
           lambda r: "prompt" in r and ("response" in r or "completion" in r), _convert_prompt_response),
]}

ALIASES = {"ultrachat": "messages", "chat": "messages", "pairs": "spin", "dpo": "spin",
           "mt-bench": "mt_bench", "prompt-response": "prompt_response", "trajectories": "fireact"}


def get_format(name: str) -> Format:
    """The format called ``name`` (or an alias such as ``ultrachat``); unknown names are a UserError."""
    key = ALIASES.get(name.lower(), name.lower().replace("-", "_"))
    if key not in FORMATS:
        choices = [*FORMATS, *ALIASES]
        raise UserError(f"unknown data format '{name}'; choose auto or one of {', '.join(FORMATS)}."
                        f"{suggest(name, choices)}")
    return FORMATS[key]


def detect_format(row: dict[str, Any], ref: RowRef) -> Format:
    """The first format in :data:`FORMATS` that recognizes ``row``'s fields."""
    for fmt in FORMATS.values():
        if fmt.detect(row):
            return fmt
    fields = ", ".join(sorted(map(str, row))) or "none"
    raise ref.error(f"cannot detect the data format from the fields ({fields}); pass --format, "
                    f"one of {', '.join(FORMATS)}")
