"""Answer checkers: the rules that say whether an answer is right, one small function each.

GSM8K-style numbers and the embedded arithmetic task (:func:`check_gsm8k`), MATH through math-verify
(:func:`check_math`), RISE's stricter boxed-answer forms (:func:`boxed_number`, :func:`math_answer`),
HotpotQA's normalized exact match and F1, StrategyQA's yes/no and MMLU's letter. The task registry
(:mod:`selfplay.envs.tasks`) puts them together per task; :data:`ANSWER_VERIFIERS` are the two task-free
verifiers ``verifier:em`` and ``verifier:f1``.
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from selfplay.data.answers import boxed_answers, canonical_number, extract_gsm8k_answer, last_boxed
from selfplay.errors import MissingExtraError

_PUNCTUATION = frozenset(string.punctuation)
# (answer, gold) -> (reward, info): how a task scores an answer (see selfplay.envs.tasks.Task.score).
Score = Callable[[str, str], tuple[float, dict[str, Any]]]


def check_gsm8k(completion: str, reference: str) -> bool:
    """Numeric equality of the final answers; ``reference`` may be a full solution or a bare number."""
    gold = extract_gsm8k_answer(reference)
    pred = extract_gsm8k_answer(completion)
    return gold is not None and pred is not None and Decimal(gold) == Decimal(pred)


def check_arith(completion: str, reference: str) -> bool:
    """The embedded arithmetic task ends solutions with ``#### n`` like GSM8K, so it checks the same way."""
    return check_gsm8k(completion, reference)


def check_math(completion: str, reference: str) -> bool:
    """Mathematical equivalence of the final answers, by math-verify.

    The gold answer is the reference solution's final boxed answer (several adjacent boxes are one
    set-valued answer, see :func:`boxed_answers`), or the whole reference when it is a bare answer; the
    prediction is whatever math-verify extracts from the completion (a boxed answer first, else the last
    expression). Any parser failure or timeout counts as wrong.
    """
    try:
        from math_verify import parse, verify
    except ImportError:
        raise MissingExtraError("math-verify", "eval", "Checking MATH answers") from None
    boxes = boxed_answers(reference)
    gold_text = f"${', '.join(boxes) if boxes else reference.strip().strip('$')}$"
    # math-verify's timeouts use SIGALRM, which only works in the main thread; elsewhere run without.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(gold_text, parsing_timeout=limit)
        pred = parse(completion, parsing_timeout=limit)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=limit))
    except Exception:  # sympy/latex2sympy errors and math-verify's TimeoutException: a wrong answer
        return False


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA answer normalization: lowercase, no punctuation, no articles, single spaces.

    Reproduces the official HotpotQA evaluation script so EM/F1 match published numbers.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the normalized answers are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: str, gold: str) -> float:
    """Token-level F1 of the normalized answers (the official HotpotQA definition: a yes/no/noanswer
    answer scores 0 unless it matches exactly)."""
    pred_norm, gold_norm = normalize_answer(pred), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if (pred_norm in special or gold_norm in special) and pred_norm != gold_norm:
        return 0.0
    pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def extract_finish_answer(text: str) -> str | None:
    """The argument of the last ReAct ``finish[...]`` action in ``text``, else None."""
    found = re.findall(r"finish\[([^\]]*)\]", text)
    return found[-1].strip() if found else None


def predicted_answer(completion: str) -> str:
    """The answer a completion gives: its last ``finish[...]`` argument (an agent trajectory), else the
    whole completion, stripped."""
    answer = extract_finish_answer(completion)
    return answer if answer is not None else completion.strip()


# --------------------------------------------------------------------------- RISE's answer forms


_NUMBER_ONLY = re.compile(r"[-+]?\d+(?:\.\d+)?")
# A box: "\\boxed{", "\\fbox{", or "boxed{" whose backslash the model dropped (the anchor's regex takes it).
_BOX_OPEN = re.compile(r"(?:\\fbox|\\?boxed)\s*\{")


def _boxes(text: str) -> list[str]:
    """The contents of every box in ``text`` (nested braces kept), in order; an unclosed box is left out."""
    contents = []
    for match in _BOX_OPEN.finditer(text):
        depth = 0
        for i in range(match.end() - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[match.end():i])
                break
    return contents


def boxed_number(text: str) -> str | None:
    """RISE's GSM8K answer: the last non-empty box (``\\boxed{}``, or ``boxed{}`` without its backslash)
    when it holds a number — commas, ``$`` and a sign allowed, ``18.00`` equal to ``18`` — else None.
    Where this differs from the anchor's ``extract_answers_from_llm`` (docs/anchor-differences.md), the
    anchor's reading is :func:`anchor_gsm8k_answer`."""
    content = next((c for c in reversed(_boxes(text)) if c.strip()), None)
    if content is None:
        return None
    cleaned = content.replace(",", "").replace("\\$", "").strip().strip("$").strip()
    return canonical_number(cleaned) if _NUMBER_ONLY.fullmatch(cleaned) else None


def anchor_gsm8k_answer(text: str) -> str | None:
    """cmu-mind/RISE ``environments/gsm8k.py:47-61``: the last ``boxed{...}`` (no nested braces, non-empty),
    commas dropped, read by ``int()`` (so ``18.00`` and ``$18`` are no answer, `` +18 `` is 18), else None."""
    matches = re.findall(r"boxed{([^}]+)}", text)
    if not matches:
        return None
    try:
        return str(int(matches[-1].replace(",", "")))
    except ValueError:
        return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Decimal(a) == Decimal(b)


def arith_answer(text: str) -> str | None:
    """The embedded task's answer: a boxed number, else the last number (small models rarely box)."""
    return boxed_number(text) or extract_gsm8k_answer(text)


def math_answer(text: str) -> str | None:
    """The final boxed answer (adjacent boxes joined as one set-valued answer), spaces removed; else None."""
    boxes = boxed_answers(text)
    return re.sub(r"\s+", "", ", ".join(boxes)) if boxes else None


def math_gold(reference: str) -> str | None:
    """A MATH reference's answer: its boxed answer, else the bare reference (spaces and $ removed)."""
    return math_answer(reference) or (re.sub(r"\s+", "", reference.strip().strip("$")) or None)


def math_vote_key(text: str) -> str | None:
    """The boxed answer (spaces removed) else the last number: equal strings vote together; equivalent
    forms written differently split the vote, which only makes majority voting conservative."""
    answer = last_boxed(text)
    return "".join(answer.split()) if answer is not None else extract_gsm8k_answer(text)


# --------------------------------------------------------------------------- scores: (answer, gold) -> (reward, info)


def check_score(check: Callable[[str, str], bool], extract: Callable[[str], str | None]) -> Score:
    """A checker as a score: reward 1.0 or 0.0, and the agents' info fields (em, the extracted answer). F1 is
    the reward too: a checked answer (a number, an expression) is right or wrong as a whole, as StrategyQA's
    yes/no (token overlap would credit "18" against "180" nothing and "1 8" half)."""
    def score(answer: str, gold: str) -> tuple[float, dict[str, Any]]:
        reward = float(check(answer, gold))
        return reward, {"em": reward, "f1": reward, "pred": extract(answer) or "", "gt": gold}
    return score


def qa_score(pred: str, gold: str) -> tuple[float, dict[str, Any]]:
    """HotpotQA/Bamboogle: normalized exact match is the reward; F1 and the normalized answers recorded."""
    em = exact_match(pred, gold)
    return em, {"em": em, "f1": f1_score(pred, gold), "pred": normalize_answer(pred), "gt": normalize_answer(gold)}


def yes_no_score(pred: str, gold: str) -> tuple[float, dict[str, Any]]:
    """StrategyQA as the anchor scores it (ReinholdM/SPIN, FireAct ``tasks/strategyqa.py:21-25``): the answer,
    lower-cased, starts with "yes" and the gold is yes, or with "no" and the gold is no — so "Nope" and "not
    really" are no, " yes" (a leading space) is neither. ``gt`` is the gold as a boolean, as the anchor's."""
    answer, truth = pred.lower(), _yes_no_gold(gold)
    em = int(answer.startswith("yes") and truth is True or answer.startswith("no") and truth is False)
    return float(em), {"em": em, "f1": float(em), "pred": answer, "gt": truth}


def _yes_no_gold(gold: str | bool) -> bool | None:
    """StrategyQA's gold: a boolean, or its text ("yes"/"no", "true"/"false"); None when it is neither."""
    if isinstance(gold, bool):
        return gold
    return {"yes": True, "true": True, "no": False, "false": False}.get(str(gold).strip().lower())


def yes_no_answer(completion: str) -> str:
    """A whole completion's yes/no answer for StrategyQA: its finish[...] argument, else its first word that is
    yes or no (normalized), else the completion."""
    answer = extract_finish_answer(completion)
    if answer is not None:
        return answer
    return next((w for w in normalize_answer(completion).split() if w in ("yes", "no")), completion.strip())


def letter_score(pred: str, gold: str) -> tuple[float, dict[str, Any]]:
    """MMLU as the anchor scores it (``tasks/mmlu.py:42-46``): the answer, lower-cased, starts with the gold
    letter — "B. the ring" and "b" score, "(B) the ring" does not."""
    answer, truth = pred.lower(), gold.strip().lower()
    em = int(bool(truth) and answer.startswith(truth))
    return float(em), {"em": em, "f1": float(em), "pred": answer, "gt": truth}


def letter_answer(completion: str) -> str:
    """A whole completion's MMLU answer: its finish[...] argument, else its first standalone letter A-D, else
    the completion."""
    answer = extract_finish_answer(completion)
    if answer is not None:
        return answer
    match = re.search(r"\b([A-D])\b", completion)
    return match[1] if match else completion.strip()


# The task-free verifiers: (completion, reference) -> score in [0, 1] on the completion's answer.
ANSWER_VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "em": lambda completion, reference: exact_match(predicted_answer(completion), reference),
    "f1": lambda completion, reference: f1_score(predicted_answer(completion), reference),
}
