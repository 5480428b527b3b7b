"""HTML built from Python values, escaped by default: the report shows model output, which is untrusted.

Every string that reaches :func:`el` as a child or an attribute value is passed through ``html.escape``;
only :class:`Html` values (markup this package built) are inserted as they are. So a sample that reads
``<script>alert(1)</script>`` is shown as that text and never becomes an element.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

# Model texts longer than this are cut in the page (the full text stays in the linked JSONL).
TEXT_LIMIT = 4000


class Html(str):
    """Markup built by this package (trusted); any other ``str`` is text and gets escaped."""


def esc(value: Any) -> Html:
    """``value`` as text: HTML-escaped (quotes too, so it is safe inside attributes)."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in _flatten(parts)))


def _flatten(parts: Iterable[Any]) -> Iterable[Any]:
    for p in parts:
        if p is None:
            continue
        if isinstance(p, (list, tuple)):
            yield from _flatten(p)
        else:
            yield p


def el(tag: str, *children: Any, **attrs: Any) -> Html:
    """``<tag attrs>children</tag>``; ``class_`` sets class, ``data_x`` sets data-x; None/False attrs are left out.

    ``tag`` and the attribute names come from this package's code, never from data.
    """
    parts = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        parts.append(name if value is True else f'{name}="{esc(value)}"')
    opening = f"<{tag}{' ' if parts else ''}{' '.join(parts)}>"
    if tag in ("br", "hr", "img", "meta", "input"):
        return Html(opening)
    return Html(f"{opening}{join(children)}</{tag}>")


def clip(text: Any, limit: int = TEXT_LIMIT) -> str:
    """A model text for display: strings as they are, anything else as JSON; cut past ``limit`` characters."""
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=1)
    if not s.strip():
        return f"[empty: {len(s)} whitespace character(s)]" if s else "[empty]"
    if len(s) > limit:
        s = s[:limit] + f"\n[… {len(s) - limit} more characters in the JSONL]"
    return s


def pre(text: Any, class_: str = "text") -> Html:
    """A block of model text, whitespace kept (escaped, cut at :data:`TEXT_LIMIT`)."""
    return el("pre", clip(text), class_=class_)


def badge(label: str, kind: str = "") -> Html:
    """A small label; ``kind`` picks its colour: chosen, rejected, kept, ok, bad, ns."""
    return el("span", label, class_=f"badge {kind}".strip())


def fold(summary: Any, *body: Any, open_: bool = False, class_: str | None = None) -> Html:
    """A ``<details>`` block: folded unless ``open_``."""
    return el("details", el("summary", summary), *body, open=open_, class_=class_)


def messages(msgs: Any) -> Html:
    """A chat prompt (list of {role, content}) as one block per message; anything else as text."""
    if not isinstance(msgs, list):
        return pre(msgs)
    out = []
    for m in msgs:
        if isinstance(m, dict):
            out.append(el("div", el("div", str(m.get("role", "?")), class_="role"), pre(m.get("content", "")),
                          class_="msg"))
        else:
            out.append(pre(m))
    return el("div", out, class_="messages")


def fmt_number(value: Any, spec: str = "{:.3g}") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    return spec.format(value)


CSS = """
:root { --fg:#1d2433; --muted:#6b7280; --line:#d8dde6; --bg:#ffffff; --panel:#f6f8fb; --accent:#2f6fdf;
        --good:#1a7f37; --bad:#c62828; --warn:#9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { padding: 14px 24px; border-bottom: 1px solid var(--line); background: var(--panel); }
header h1 { margin: 0 0 4px; font-size: 20px; }
nav a { margin-right: 12px; color: var(--accent); text-decoration: none; }
main { padding: 8px 24px 48px; max-width: 1500px; }
section { margin-top: 22px; }
h2 { font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.muted { color: var(--muted); }
table.metrics { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.metrics th, table.metrics td { border: 1px solid var(--line); padding: 3px 8px; text-align: right;
  vertical-align: top; }
table.metrics th { background: var(--panel); }
table.metrics td .ci, table.metrics td .delta { display: block; font-size: 11px; color: var(--muted); }
table.metrics td .delta.sig { color: var(--fg); font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.summary { margin: 4px 0 8px; font-variant-numeric: tabular-nums; }
.chart { border: 1px solid var(--line); border-radius: 6px; padding: 4px; background: #fff; }
details { border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; background: #fff; }
details > summary { cursor: pointer; padding: 6px 10px; background: var(--panel); border-radius: 6px; }
details[open] > summary { border-bottom: 1px solid var(--line); border-radius: 6px 6px 0 0; }
details > :not(summary) { margin: 8px 10px; }
.record { border-top: 2px solid var(--line); padding: 8px 0; }
.record:first-of-type { border-top: none; }
.record > .head { font-weight: 600; margin-bottom: 4px; }
pre.text { white-space: pre-wrap; word-break: break-word; margin: 2px 0; padding: 6px 8px; background: var(--panel);
  border-radius: 4px; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; max-height: 420px;
  overflow: auto; }
.messages .msg { margin: 3px 0; }
.messages .role, .label { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.cands { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 8px; }
.cand, .turn, .step { border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; }
.cand.chosen, .turn.kept { border-color: var(--good); box-shadow: inset 3px 0 0 var(--good); }
.cand.rejected { border-color: var(--bad); box-shadow: inset 3px 0 0 var(--bad); }
.ranked { display: grid; grid-template-columns: minmax(0, 1fr) auto; gap: 12px; align-items: start; }
.badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 9px; margin-left: 4px;
  background: #e8ecf3; color: var(--fg); font-weight: 500; }
.badge.chosen, .badge.kept, .badge.ok { background: #dcf3e3; color: var(--good); }
.badge.rejected, .badge.bad { background: #fbe3e3; color: var(--bad); }
.badge.ns { background: #f1f1f1; color: var(--muted); }
.answer { padding-left: 8px; }
.answer.ok { box-shadow: inset 3px 0 0 var(--good); }
.answer.bad { box-shadow: inset 3px 0 0 var(--bad); }
"""


def page(title: str, nav: list[tuple[str, str]], body: Any, subtitle: Any = None) -> Html:
    """A whole self-contained document: inline CSS, no script, no external resource."""
    links = el("nav", [el("a", text, href=f"#{anchor}") for anchor, text in nav])
    head = el("head", Html('<meta charset="utf-8">'),
              Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
              el("title", title), el("style", Html(CSS)))
    top = el("header", el("h1", title), el("div", subtitle, class_="muted") if subtitle else None, links)
    return Html("<!DOCTYPE html>\n" + el("html", head, el("body", top, el("main", body)), lang="en") + "\n")
