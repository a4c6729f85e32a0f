"""The calculator tool: arithmetic on numbers, parsed into a syntax tree and walked by hand, never
``eval``.

``eval("2+3")`` would also run ``__import__('os').system(...)``: a tool whose input a model writes
(and a prompt can steer) must not execute code. ``calculate`` parses the text with
``ast.parse(mode="eval")`` and evaluates only a whitelist of nodes — numbers, + - * / // % ** and
unary minus — so anything else (names, calls, attributes, strings, comparisons) is refused by
construction. Sizes are bounded too: an expression of at most 200 characters, exponents up to 64 and
results up to 1e30 in magnitude, so ``9**9**9`` cannot take the server's memory.
"""

from __future__ import annotations

import ast
import json
import math
import operator

MAX_LENGTH, MAX_EXPONENT, MAX_MAGNITUDE = 200, 64, 1e30
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}

CALCULATOR = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string",
                                                                   "description": "e.g. 37*48+5"}},
                   "required": ["expression"]}}}


class CalculatorError(ValueError):
    pass


def calculate(expression: str):
    """The value of an arithmetic expression (int or float); CalculatorError says what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("the expression must be a non-empty string")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    return _evaluate(tree.body)


def _evaluate(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        try:
            value = BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
        if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE or not math.isfinite(value):
            raise CalculatorError("the result is too large or not a real number")
        return value
    raise CalculatorError("only numbers, + - * / // % ** and parentheses are allowed, not "
                          f"{type(node).__name__}")


def format_number(value) -> str:
    """An int as it is; a float with up to 10 significant digits, without a trailing .0 (6.0 →
    "6")."""
    if isinstance(value, float):
        text = f"{value:.10g}"
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def run_tool(name: str, arguments: str) -> str:
    """Run a tool call as the client receives it (a name and JSON arguments): the result text, or
    "error: ..." (which the model reads like any result)."""
    if name != "calculator":
        return f"error: unknown tool {name!r}"
    try:
        args = json.loads(arguments)
        if not isinstance(args, dict) or set(args) != {"expression"}:
            return "error: the calculator takes {\"expression\": \"...\"}"
        return format_number(calculate(args["expression"]))
    except (ValueError, TypeError) as e:
        return f"error: {e}"
