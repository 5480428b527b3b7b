"""The MATH answer check of the RISE anchor: string normalisation, then equality.

A port of cmu-mind/RISE ``environments/math_equivalence.py`` (itself the ``is_equiv`` of Hendrycks et al.'s
MATH repository, MIT licence), kept line for line in behaviour so ``rise.rewards: anchor`` gives the rewards
the anchor gave — including its blind spots (``0.5`` equals ``\\frac{1}{2}`` but ``1/3`` does not equal
``\\frac13`` written otherwise, units only go when written ``\\text{ ...}``). The default rule
(``rise.rewards: selfplay``) checks equivalence with math-verify instead (:func:`selfplay.envs.verifiers.check_math`).
"""

from __future__ import annotations

import re

# environments/math.py:51 — the last box with at most one level of nested braces.
_ANCHOR_BOX = re.compile(r"boxed\{((?:[^{}]|(?:{[^}]*}))*)\}")


def anchor_boxed(text: str) -> str | None:
    """The anchor's ``MATHEnv.extract_answer``: the content of the last ``boxed{...}`` its regex finds (one
    level of nested braces; ``\\frac{\\sqrt{3}}{2}`` is cut to ``\\frac{\\sqrt{3}``), else None."""
    matches = _ANCHOR_BOX.findall(text)
    return matches[-1] if matches else None


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr[0] == "{":  # an empty piece raises IndexError, as the anchor's: plain equality then
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        if b != "{":
            new_str += "{" + a + "}{" + b + "}" + substr[2:]
        else:
            new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    if len(string.split("/")) != 2:
        return string
    a, b = string.split("/")
    try:
        a_int, b_int = int(a), int(b)
    except ValueError:
        return string
    if string != f"{a_int}/{b_int}":
        return string
    return "\\frac{" + str(a_int) + "}{" + str(b_int) + "}"


def _remove_right_units(string: str) -> str:
    # "\\text{ " only ever occurs (at least in the val set) when describing units
    if "\\text{ " in string:
        splits = string.split("\\text{ ")
        if len(splits) != 2:  # the anchor asserts; is_equiv turns the failure into plain equality
            raise ValueError("more than one \\text{ ")
        return splits[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split[0] != "{":  # an IndexError here (a trailing \sqrt) also falls back to plain equality
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_string(string: str) -> str:
    """math_equivalence.py:69-136, ``_strip_string``."""
    string = string.replace("\n", "")
    string = string.replace("\\!", "")
    string = string.replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "").replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if len(string) == 0:
        return string
    if string[0] == ".":
        string = "0" + string
    if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:
        string = string.split("=")[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def is_equiv(str1: str | None, str2: str | None) -> bool:
    """math_equivalence.py:138-152: both None is equal (the anchor warns), one None is not, else the
    normalised strings compare (any failure of the normalisation: the raw strings)."""
    if str1 is None and str2 is None:
        return True
    if str1 is None or str2 is None:
        return False
    try:
        return strip_string(str1) == strip_string(str2)
    except Exception:  # the anchor's bare except (IndexError and its assertion, in practice)
        return str1 == str2
