"""A safe arithmetic evaluator for the agent's ``calculator[expression]`` tool.

Model output is never handed to ``eval``: the expression is checked character by character, parsed with
:func:`ast.parse` and walked over a whitelist of node types — numbers, ``+ - * /``, unary ``-``/``+`` and
parentheses (which the parser folds into the tree). Names, calls, attributes, subscripts, ``**``, ``//``,
``%``, comparisons, strings and everything else are refused. Numbers are exact decimals
(:class:`decimal.Decimal`, 28 significant digits), so ``0.1 + 0.2`` is ``0.3``; every literal and every
intermediate result must stay within :data:`MAX_MAGNITUDE`, and the expression within :data:`MAX_LENGTH`
characters. Every problem — a syntax error, division by zero, a refused construct, a number too large — is a
:class:`CalculatorError` with a short message for the model; nothing else escapes.
"""

from __future__ import annotations

import ast
import decimal
import re
from decimal import Decimal

MAX_LENGTH = 200  # characters of an expression
MAX_MAGNITUDE = Decimal(10) ** 15  # of any literal or intermediate result
_CONTEXT = decimal.Context(prec=28, traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow])
# Digits, the decimal point, the four operators, parentheses and spaces: anything else (letters, '_',
# '**' is caught later as a node, '%', ',') is refused before parsing.
_ALLOWED = re.compile(r"[0-9.+\-*/() \t]*")
_BINARY = {ast.Add: _CONTEXT.add, ast.Sub: _CONTEXT.subtract, ast.Mult: _CONTEXT.multiply, ast.Div: _CONTEXT.divide}
_UNARY = {ast.USub: _CONTEXT.minus, ast.UAdd: _CONTEXT.plus}


class CalculatorError(ValueError):
    """An expression the calculator will not or cannot evaluate; the message is shown to the model."""


def evaluate(expression: str) -> Decimal:
    """The value of ``expression``; raises :class:`CalculatorError` (only) for anything it refuses."""
    text = expression.strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    if not _ALLOWED.fullmatch(text):
        bad = next(ch for ch in text if not _ALLOWED.fullmatch(ch))
        raise CalculatorError(f"unsupported character {bad!r}: use numbers, + - * / and parentheses")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("not a valid expression") from None
    try:
        return _value(tree.body, text)
    except (decimal.DivisionByZero, ZeroDivisionError):
        raise CalculatorError("division by zero") from None
    except (decimal.DecimalException, ArithmeticError, RecursionError):
        raise CalculatorError("the result is undefined or too large") from None


def _value(node: ast.AST, text: str) -> Decimal:
    """The value of a whitelisted node; every other node type is refused."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        # The literal's own digits, not Python's float: "0.1" is exactly 0.1.
        literal = ast.get_source_segment(text, node) or ""
        return _bounded(Decimal(literal))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left, text), _value(node.right, text)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand, text))
    what = {ast.Pow: "powers", ast.FloorDiv: "floor division"}.get(type(getattr(node, "op", None)), "")
    raise CalculatorError(f"{what or type(node).__name__ + ' is'} not supported: use numbers, + - * / and "
                          "parentheses")


def _bounded(value: Decimal) -> Decimal:
    if not value.is_finite() or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"number out of range (at most {MAX_MAGNITUDE:.0e} in size)")
    return value


def format_number(value: Decimal) -> str:
    """``7`` for whole numbers, else the plain decimal without trailing zeros (``0.5``, ``0.3333...``)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
