"""Arithmetic word problems, written as instruction records that teach a model to call the calculator.

A problem comes in two forms, so that one model learns both and can be scored both ways:

    with the tool     instruction "Sam has 37 apples and buys 48 more. How many apples does Sam have?
                      Tools: calculator"
                      output      <tool_call>{"name":"calculator","arguments":{"expression":"37+48"}}</tool_call>
                                  <tool_result>85</tool_result>85            (one line; wrapped here)
    without it        the same instruction without the "Tools:" line; output "85"

The first is what the server renders for a chat request that offers the calculator (see
``tinyllm.serve.chat``): the model has to read the numbers and the operation off the words and copy the
result; the calculator does the arithmetic. The second needs the model to add 37 and 48 itself, which a
3M-parameter model trained for minutes cannot do for numbers it was not shown (nanochat's calculator makes the
same point at a larger scale).
"""

from __future__ import annotations

import random

from ..serve.chat import format_tool_call, format_tool_result, tools_line

NAMES = ("Sam", "Mia", "Leo", "Ava", "Noah", "Zoe")
ITEMS = ("apples", "books", "coins", "pens", "cards", "shells")
# (template, operator, how to draw a and b): each has one integer answer
PROBLEMS = (
    ("{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", "+", "two"),
    ("{name} had {a} {item} and gave away {b}. How many {item} are left?", "-", "smaller"),
    ("There are {b} boxes with {a} {item} in each. How many {item} are there in all?", "*", "small"),
    ("{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?", "/", "divides"),
)


def make_problem(rng: random.Random) -> dict:
    """One problem: its question, expression and answer (an int)."""
    template, op, draw = rng.choice(PROBLEMS)
    if draw == "two":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
    elif draw == "smaller":
        a = rng.randint(20, 999)
        b = rng.randint(1, a - 1)
    elif draw == "small":
        a, b = rng.randint(11, 99), rng.randint(3, 19)
    else:
        b = rng.randint(3, 19)
        a = b * rng.randint(11, 60)
    answer = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    question = template.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b)
    return {"question": question, "expression": f"{a}{op}{b}", "answer": answer}


def as_record(problem: dict, with_tool: bool) -> dict:
    """The problem as an Alpaca record (see the module docstring), tagged with its "task"."""
    answer = str(problem["answer"])
    if not with_tool:
        return {"instruction": problem["question"], "input": "", "output": answer, "task": "no tool"}
    call = format_tool_call("calculator", {"expression": problem["expression"]})
    return {"instruction": f"{problem['question']}\n{tools_line(['calculator'])}", "input": "",
            "output": call + format_tool_result(answer) + answer, "task": "calculator"}


def tool_problems(train: int = 1000, test: int = 100, seed: int = 123):
    """(train records, test problems): training records alternate the two forms; test problems (as dicts
    with question, expression, answer) share no question with training."""
    rng, seen = random.Random(seed), set()
    problems = []
    while len(problems) < train + test:
        problem = make_problem(rng)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    records = [as_record(p, with_tool=i % 2 == 0) for i, p in enumerate(problems[:train])]
    return records, problems[train:]
