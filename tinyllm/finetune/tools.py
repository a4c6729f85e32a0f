"""Scoring tool use: held-out word problems answered by one model with the calculator and without
it.

The model writes a call and, since it was trained on calls followed by their results, goes on to
write a ``<tool_result>`` and an answer of its own. Both ways start from that same greedy reply:

    with the tool      cut at ``</tool_call>``, the call parsed strictly and run, the real ``<tool_result>``
                       appended, and the answer the model writes after it (what the server and the
                       chat page do)
    without the tool   nothing is run: the answer after the result the model made up itself

An answer is right when it is exactly the number. The problems come from
``tinyllm.data.tool_problems``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..data.instructions import end_token, format_prompt
from ..data.tool_problems import as_record
from ..serve.chat import (TOOL_CALL, TOOL_CALL_END, TOOL_RESULT_END, format_tool_result,
                          parse_tool_call)
from ..serve.tools import run_tool


def greedy_replies(model, tokenizer, prompts, max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Greedy continuations of prompt texts, each ended by the end token, batched by length."""
    from ..generate import generate
    end = end_token(tokenizer).id
    encoded = [tokenizer.encode(p, allowed_special="none") for p in prompts]
    replies = [None] * len(prompts)
    order = np.argsort([len(p) for p in encoded], kind="stable")
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size].tolist()
        new = generate(model, [encoded[i][-(model.config.block_size - max_new_tokens):]
                               for i in rows],
                       max_new_tokens, temperature=0.0, stop_ids=(end,))
        for row, ids in zip(rows, new):
            replies[row] = tokenizer.decode(ids)
    return replies


def evaluate_tool_use(model, tokenizer, problems, batch_size: int = 16,
                      template: str = "short") -> dict:
    """Accuracy with and without the calculator, overall and per operation, the fraction of
    well-formed calls, and the answers."""
    prompts = [format_prompt(as_record(p), template) for p in problems]
    # a call + result + answer: ~55 tokens
    replies = greedy_replies(model, tokenizer, prompts, 64, batch_size)
    follow_ups, calls, without = [], [], []
    for prompt, reply in zip(prompts, replies):
        written = reply.startswith(TOOL_CALL) and TOOL_CALL_END in reply
        call_text = reply[len(TOOL_CALL):reply.index(TOOL_CALL_END)] if written else ""
        call = parse_tool_call(call_text, ["calculator"])
        calls.append(call is not None)
        without.append(reply.rpartition(TOOL_RESULT_END)[2].strip())
        if call is not None:
            result = run_tool(call["function"]["name"], call["function"]["arguments"])
            follow_ups.append(prompt + TOOL_CALL + call_text + TOOL_CALL_END
                              + format_tool_result(result))
    answers = iter(greedy_replies(model, tokenizer, follow_ups, 8,
                                  batch_size) if follow_ups else [])
    with_tool = [next(answers).strip() if ok else "" for ok in calls]
    by_op = defaultdict(lambda: [0, 0, 0])
    for p, a, b in zip(problems, with_tool, without):
        counts = by_op[next(c for c in "+-*/" if c in p["expression"])]
        counts[0] += 1
        counts[1] += a == str(p["answer"])
        counts[2] += b == str(p["answer"])
    n = len(problems)
    return {"examples": n, "valid_calls": sum(calls) / n,
            "with_tool": sum(v[1] for v in by_op.values()) / n,
            "without_tool": sum(v[2] for v in by_op.values()) / n,
            "by_operation": {op: {"examples": v[0], "with_tool": v[1] / v[0],
                                  "without_tool": v[2] / v[0]}
                             for op, v in sorted(by_op.items())},
            "answers_with_tool": with_tool, "answers_without_tool": without}
