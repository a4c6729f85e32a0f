"""Arithmetic word problems,
written as instruction records that teach a model to call the calculator.

    instruction   "Sam has 28 coins and gets 39 more. How many coins now?\nTools: calculator"
    output        <tool_call>{"name":"calculator","arguments":{"expression":"28+39"}}</tool_call>
                  <tool_result>67</tool_result>67                            (one line; wrapped here)

The instruction is what the server renders for a chat request that offers the calculator (see
``tinyllm.serve.chat``). The model has to read the numbers and the operation off the words, write
the call, and after the result copy it as the answer; the calculator does the arithmetic. Generation
stops at ``</tool_call>`` and the real result is put in, so the digits the model learns to write
inside ``<tool_result>`` are only ever its own guess: what it answers when the tool is not run,
which is how ``tinyllm.finetune.tools`` scores the same model without the tool (nanochat's
calculator makes the same point at a larger scale).
"""

from __future__ import annotations

import random

from ..serve.chat import format_tool_call, format_tool_result, tools_line

NAMES = ("Sam", "Mia", "Leo", "Ava", "Noah", "Zoe")
ITEMS = ("apples", "books", "coins", "pens", "cards", "shells")
# (template, operator, how to draw a and b): each has one integer answer
PROBLEMS = (
    ("{name} has {a} {item} and gets {b} more. How many {item} now?", "+", "two"),
    ("{name} had {a} {item} and gave away {b}. How many are left?", "-", "smaller"),
    ("{b} boxes hold {a} {item} each. How many {item} in all?", "*", "small"),
    ("{name} shares {a} {item} equally among {b} friends. How many each?", "/", "divides"),
)


def make_problem(rng: random.Random) -> dict:
    """One problem: its question, expression and answer (an int)."""
    template, op, draw = rng.choice(PROBLEMS)
    if draw == "two":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    elif draw == "smaller":
        a = rng.randint(20, 99)
        b = rng.randint(10, a - 1)
    elif draw == "small":
        a, b = rng.randint(11, 99), rng.randint(3, 9)
    else:
        b = rng.randint(3, 9)
        a = b * rng.randint(4, 11)
    answer = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    question = template.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b)
    return {"question": question, "expression": f"{a}{op}{b}", "answer": answer}


def as_record(problem: dict) -> dict:
    """The problem as an Alpaca record (see the module docstring)."""
    answer = str(problem["answer"])
    call = format_tool_call("calculator", {"expression": problem["expression"]})
    return {"instruction": f"{problem['question']}\n{tools_line(['calculator'])}", "input": "",
            "output": call + format_tool_result(answer) + answer, "task": "calculator"}


def tool_problems(train: int = 1000, test: int = 100, seed: int = 123):
    """(training records, test problems as dicts with question, expression, answer); no question is
    in both. Seeded: the same seed gives the same problems."""
    rng, seen = random.Random(seed), set()
    problems = []
    while len(problems) < train + test:
        problem = make_problem(rng)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    return [as_record(p) for p in problems[:train]], problems[train:]
