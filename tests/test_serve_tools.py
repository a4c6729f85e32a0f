"""The calculator (never eval), the tool-call markup, the chat template and the streamed text."""

import json

import pytest

from tinyllm.data.tool_problems import as_record, make_problem, tool_problems
from tinyllm.serve.chat import (TOOL_CALL, TOOL_CALL_END, ChatTemplate, IncrementalText, format_tool_call,
                                parse_tool_call)
from tinyllm.serve.tools import CalculatorError, calculate, format_number, run_tool
from tinyllm.tokenizer import BPETokenizer


@pytest.mark.parametrize("expression, value", [
    ("2+3*4", 14), ("(2+3)*4", 20), ("7/2", 3.5), ("7//2", 3), ("-7%3", 2), ("2**10", 1024), ("-2**2", -4),
    (" 12 + 30 ", 42), ("1.5*4", 6.0), ("--3", 3)])
def test_calculator_follows_python_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "not Call"), ("x+1", "not Name"), ("'a'*3", "not Constant"),
    ("1<2", "not Compare"), ("9**9**9", "exponent"), ("(10**29)**64", "too large"), ("2.0**-1e9", "exponent"), ("1/0", "division by zero"), ("10**30*10**30", "too large"),
    ("2+", "not an arithmetic"), ("1" * 201, "longer than"), ("", "non-empty"), ("True+1", "not Constant"),
    ("(1).real", "not Attribute"), ("[1][0]", "not Subscript")])
def test_calculator_refuses_everything_but_arithmetic(expression, message):
    with pytest.raises(CalculatorError, match=message):
        calculate(expression)


def test_run_tool_formats_results_and_reports_errors_as_text():
    assert run_tool("calculator", '{"expression": "78/6"}') == "13"
    assert format_number(2 / 3) == "0.6666666667" and format_number(10 ** 12) == "1000000000000"
    assert run_tool("calculator", '{"expression": "1/0"}') == "error: division by zero"
    assert run_tool("calculator", '{"expr": "1"}').startswith("error:")
    assert run_tool("search", "{}") == "error: unknown tool 'search'"


def test_tool_calls_are_parsed_strictly():
    text = format_tool_call("calculator", {"expression": "1+2"})
    inner = text[len(TOOL_CALL):-len(TOOL_CALL_END)]
    call = parse_tool_call(inner, ["calculator"])
    assert call["function"]["name"] == "calculator" and json.loads(call["function"]["arguments"]) == {"expression": "1+2"}
    for bad in ['{"name":"calculator"}', '{"name":"rm","arguments":{}}', '{"name":"calculator","arguments":"1+2"}',
                '{"name":"calculator","arguments":{},"extra":1}', '{"name":"calculator","arguments":{}', "[]"]:
        assert parse_tool_call(bad, ["calculator"]) is None


def test_chat_template_renders_turns_tools_and_results():
    alpaca = ChatTemplate({"name": "alpaca", "prompt": "### Instruction:\n{instruction}\n\n### Response:\n",
                           "separator": "\n\n"})
    call = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+3"}'}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "5"}]
    assert alpaca.render(messages, ["calculator"]) == (
        "Be brief.\n\n### Instruction:\n2+3?\nTools: calculator\n\n### Response:\n"
        '<tool_call>{"name":"calculator","arguments":{"expression":"2+3"}}</tool_call><tool_result>5</tool_result>')
    plain = ChatTemplate(None)
    two_turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                 {"role": "user", "content": "bye"}]
    assert plain.render(two_turns) == "hi\nhello\nbye\n" and not plain.instruction_tuned
    with pytest.raises(ValueError, match="no {instruction}"):
        ChatTemplate("no field")


def test_incremental_text_holds_back_stop_strings_half_characters_and_tool_calls():
    tok = BPETokenizer.train("abc é <tool_call> STOP", 260)
    stream = IncrementalText(tok, stops=["STOP"], marker=TOOL_CALL)
    pieces = [stream.add(t) for t in tok.encode("ab é STO")]
    assert "".join(pieces) == "ab é " and stream.stopped is None           # "STO" could still become STOP
    for t in tok.encode("P tail"):
        stream.add(t)
    assert stream.text == "ab é " and stream.stopped == "STOP" and stream.finish() == ""
    call = IncrementalText(tok, marker=TOOL_CALL)
    released = "".join(call.add(t) for t in tok.encode('ok <tool_call>{"a":1}'))
    assert released == "ok " and call.call_text == '{"a":1}'
    bytes_only = BPETokenizer.train("abc", 257)
    first, second = bytes_only.encode("é")                               # two bytes, two tokens
    half = IncrementalText(bytes_only)
    assert half.add(first) == "" and half.add(second) == "é"


def test_tool_problems_are_distinct_and_checkable():
    import random
    train, test = tool_problems(40, 10, seed=1)
    assert not {r["instruction"].split("\n")[0] for r in train} & {p["question"] for p in test}
    for seed in range(50):
        problem = make_problem(random.Random(seed))
        assert calculate(problem["expression"]) == problem["answer"]
        record = as_record(problem)
        assert record["instruction"].endswith("\nTools: calculator")
        assert record["output"] == format_tool_call("calculator", {"expression": problem["expression"]}) + \
            f"<tool_result>{problem['answer']}</tool_result>{problem['answer']}"


def test_tool_use_is_scored_with_the_real_result_and_with_the_models_own(monkeypatch):
    import tinyllm.finetune.tools as tools
    problems = [{"question": "Sam has 12 pens and gets 30 more. How many pens now?", "expression": "12+30", "answer": 42},
                {"question": "5 boxes hold 5 pens each. How many pens in all?", "expression": "5*5", "answer": 25},
                {"question": "Ava had 50 coins and gave away 8. How many are left?", "expression": "50-8", "answer": 42}]
    first_replies = [format_tool_call("calculator", {"expression": "12+30"}) + "<tool_result>41</tool_result>41",
                     "25",                                                  # no call: right only without the tool
                     format_tool_call("calculator", {"expression": "50-9"}) + "<tool_result>42</tool_result>42"]

    def scripted(model, tokenizer, prompts, max_new_tokens, batch_size=16):
        if max_new_tokens > 8:
            return first_replies
        return [p.rpartition("<tool_result>")[2].partition("<")[0] for p in prompts]   # copies the result

    monkeypatch.setattr(tools, "greedy_replies", scripted)
    scores = tools.evaluate_tool_use(None, None, problems)
    assert scores["answers_with_tool"] == ["42", "", "41"] and scores["answers_without_tool"] == ["41", "25", "42"]
    assert (scores["with_tool"], scores["without_tool"], scores["valid_calls"]) == (1 / 3, 2 / 3, 2 / 3)
    assert scores["by_operation"]["*"] == {"examples": 1, "with_tool": 0.0, "without_tool": 1.0}
