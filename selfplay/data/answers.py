"""Final answers written in solution text: the number after GSM8K's ``####`` (else the last number), and
the content of ``\\boxed{}`` (MATH), with the canonical number form both compare in.

Data readers use these to store a record's short answer (``meta.answer``) and the task checkers
(:mod:`selfplay.envs.verifiers`) to read a model's answer, so they live in the data layer, below both.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number not glued to a preceding digit or dot, so "5-3" yields 5 and 3 rather than 5 and -3.
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


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
