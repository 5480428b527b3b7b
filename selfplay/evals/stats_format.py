"""How a value with its interval, and a change with its verdict, are written in tables.

``0.310 [0.22, 0.40]`` (the interval one decimal shorter than the value) and, for a change,
``+0.120 [+0.05, +0.19]``; a change whose interval includes 0 always carries ``n.s.`` (not significant)
and is never worded or styled as an improvement (rich tables dim it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NOT_SIGNIFICANT = "n.s."


def interval_format(fmt: str) -> str:
    """The format of an interval's ends: ``fmt`` with one decimal fewer (at least one), e.g. {:.3f} -> {:.2f}."""
    match = re.search(r"\.(\d+)f", fmt)
    if not match:
        return fmt
    digits = max(1, int(match.group(1)) - 1)
    return fmt[:match.start()] + f".{digits}f" + fmt[match.end():]


def signed(fmt: str) -> str:
    """``fmt`` with an explicit sign: {:.3f} -> {:+.3f} (a change is always written with its sign)."""
    return fmt if "+" in fmt else fmt.replace("{:", "{:+", 1)


def bracket(lo: float, hi: float, fmt: str) -> str:
    """``[lo, hi]`` in the interval format of ``fmt``."""
    short = interval_format(fmt)
    return f"[{short.format(lo)}, {short.format(hi)}]"


def with_interval(value: float | None, stats: Mapping[str, Any] | None, fmt: str, sep: str = " ") -> str:
    """``value [lo, hi]`` (``sep`` between them: a newline in narrow rich cells), the value alone without an
    interval, ``–`` without a value."""
    if value is None:
        return "–"
    text = fmt.format(value)
    if stats and stats.get("lo") is not None and stats.get("hi") is not None:
        text += sep + bracket(stats["lo"], stats["hi"], fmt)
    return text


def change_text(stats: Mapping[str, Any] | None, fmt: str, sep: str = " ") -> tuple[str, bool | None]:
    """(``+0.120 [+0.05, +0.19]``, significant) of a row's paired change, with `` n.s.`` appended when not
    significant; (``–``, None) without a change."""
    if not stats or stats.get("delta") is None:
        return "–", None
    text = signed(fmt).format(stats["delta"]) + sep + bracket(stats["delta_lo"], stats["delta_hi"], signed(fmt))
    if not stats.get("significant"):
        text += sep + NOT_SIGNIFICANT
    return text, bool(stats.get("significant"))
