"""Answer checkers for verifiable tasks: GSM8K-style numbers, the embedded arithmetic task, MATH
(through math-verify) and HotpotQA exact match / F1.

Used by ranking (``verifier:<name>`` judges), RISE rewards and task-accuracy evaluation. Every
verifier in :data:`VERIFIERS` takes ``(completion, reference)`` and returns a float in [0, 1].
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from selfplay.errors import MissingExtraError, UserError, suggest

# A number not glued to a preceding digit or dot, so "5-3" yields 5 and 3 rather than 5 and -3.
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PUNCTUATION = frozenset(string.punctuation)


def canonical_number(text: str) -> str | None:
    """'12.00' -> '12', '3.50' -> '3.5', '-0' -> '0'; None when not a number."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    cleaned = _THOUSANDS.sub("", text).replace("$", "")
    return _NUMBER.findall(cleaned)


def extract_gsm8k_answer(text: str) -> str | None:
    """The final numeric answer: the number after the last ``####``, else the last number in the text.

    Commas, ``$`` and a trailing period are dropped and the number is put in canonical form
    (``"$1,234.00."`` -> ``"1234"``). None when the text holds no number.
    """
    if not isinstance(text, str):
        return None
    if "####" in text:
        after = _numbers(text.rsplit("####", 1)[1])
        if after:
            return canonical_number(after[0])
    found = _numbers(text)
    return canonical_number(found[-1]) if found else None


def check_gsm8k(completion: str, reference: str) -> bool:
    """Numeric equality of the final answers; ``reference`` may be a full solution or a bare number."""
    gold = extract_gsm8k_answer(reference)
    pred = extract_gsm8k_answer(completion)
    return gold is not None and pred is not None and Decimal(gold) == Decimal(pred)


def check_arith(completion: str, reference: str) -> bool:
    """The embedded arithmetic task ends solutions with ``#### n`` like GSM8K, so it checks the same way."""
    return check_gsm8k(completion, reference)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with nested braces, else None.

    Hand-written because a regex cannot match nested braces, and the dataset layer needs the
    answer string even where the optional math-verify package is not installed.
    """
    start, command = max((text.rfind(cmd), cmd) for cmd in ("\\boxed", "\\fbox"))
    if start < 0:
        return None
    rest = text[start + len(command):]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):  # "\boxed 5" form
        match = re.match(r"\s+([^\s$]+)", rest)
        return match.group(1) if match else None
    brace = rest.find("{")
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(rest)):
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[brace + 1:i]
    return None


# What may stand between the boxes of one set-valued final answer ("\\boxed{5}, \\boxed{11} and \\boxed{-3}").
_BOX_SEPARATOR = re.compile(r"^(?:\s|,|;|\$|\\quad|\\qquad|\\text\{\s*(?:and|or)\s*\}|and|or)*$")


def boxed_answers(text: str) -> list[str]:
    """The final answer's boxes: the last ``\\boxed{}`` and the boxes directly before it, separated only by
    commas, "and"/"or" or spacing — one set-valued answer (MATH writes "the possible values are \\boxed{5},
    \\boxed{11}"). A box earlier in the text (an intermediate result, a repeated answer) is not part of it."""
    spans = []
    for match in re.finditer(r"\\(?:boxed|fbox)", text):
        content = last_boxed(text[:_box_end(text, match.start())])
        if content is not None:
            spans.append((match.start(), _box_end(text, match.start()), content))
    if not spans:
        return []
    answers = [spans[-1][2]]
    for (start, end, content), (next_start, _, _) in zip(reversed(spans[:-1]), reversed(spans[1:])):
        if not _BOX_SEPARATOR.match(text[end:next_start]):
            break
        answers.insert(0, content)
    return list(dict.fromkeys(answers))


def _box_end(text: str, start: int) -> int:
    """Index just past the box starting at ``start``: its closing brace, or the end of the token of the
    ``\\boxed 5`` form (len(text) when unclosed)."""
    rest = re.match(r"\\(?:boxed|fbox)\s*", text[start:])
    i = start + (rest.end() if rest else 0)
    if i >= len(text) or text[i] != "{":
        token = re.match(r"[^\s$]*", text[i:])
        return i + (token.end() if token else 0)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    return len(text)


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


def _predicted_answer(completion: str) -> str:
    # An agent trajectory answers through finish[...]; a plain completion is its own answer.
    answer = extract_finish_answer(completion)
    return answer if answer is not None else completion.strip()


VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "arith": lambda completion, reference: float(check_arith(completion, reference)),
    "gsm8k": lambda completion, reference: float(check_gsm8k(completion, reference)),
    "math": lambda completion, reference: float(check_math(completion, reference)),
    "em": lambda completion, reference: exact_match(_predicted_answer(completion), reference),
    "f1": lambda completion, reference: f1_score(_predicted_answer(completion), reference),
}

# meta["task"] of a prepared record -> the verifier that scores answers to it.
TASK_VERIFIERS: dict[str, str] = {"arith": "arith", "gsm8k": "gsm8k", "math": "math", "hotpotqa": "em"}


def get_verifier(name: str) -> Callable[[str, str], float]:
    """The verifier called ``name`` (one of :data:`VERIFIERS`); an unknown name is a UserError."""
    if name not in VERIFIERS:
        raise UserError(f"unknown verifier '{name}'; choose one of {', '.join(VERIFIERS)}."
                        f"{suggest(name, VERIFIERS)}")
    return VERIFIERS[name]


def verifier_for_task(task: str | None) -> str | None:
    """The verifier name for a record's ``meta["task"]`` (None for open-ended tasks such as chat)."""
    return TASK_VERIFIERS.get(task or "")
