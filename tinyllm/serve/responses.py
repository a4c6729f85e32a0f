"""OpenAI's response shapes: a whole completion, or the chunks of a stream.

    /v1/completions        {"object": "text_completion", "choices": [{"text", "index", "logprobs",
                           "finish_reason"}], "usage"}
    /v1/chat/completions   {"object": "chat.completion", "choices": [{"index", "message": {"role", "content",
                           "tool_calls"?}, "logprobs", "finish_reason"}], "usage"}

A stream sends the same pieces as ``data: {chunk}`` lines ("chat.completion.chunk" with a ``delta``,
or "text_completion" with a ``text``), each choice's last chunk carrying its ``finish_reason``, then
a chunk with no choices and the ``usage``, then ``data: [DONE]``.
"""

from __future__ import annotations

import json


def completion_response(job, tokenizer, usage: dict) -> dict:
    if job.kind == "completion":
        choices = [{"index": i, "text": _text(c), "finish_reason": c.finish_reason,
                    "logprobs": completion_logprobs(c.logprobs,
                                                    tokenizer) if job.logprobs is not None
                    else None}
                   for i, c in enumerate(job.choices)]
        return _envelope(job, "text_completion", choices, usage)
    choices = []
    for i, c in enumerate(job.choices):
        message = {"role": "assistant",
                   "content": _text(c) if not c.tool_calls else _before_call(c) or None}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        choices.append({"index": i, "message": message, "finish_reason": c.finish_reason,
                        "logprobs": chat_logprobs(c.logprobs,
                                                  tokenizer) if job.logprobs is not None else None})
    return _envelope(job, "chat.completion", choices, usage)


def _text(choice) -> str:
    """The choice's text: what the output filter released, when the server has one."""
    return choice.shown if choice.filter is not None else choice.text.text


def _before_call(choice) -> str:
    text = _text(choice)
    return text[:text.index("<tool_call>")] if "<tool_call>" in text else text


def _envelope(job, object_name, choices, usage) -> dict:
    body = {"id": _id(job), "object": object_name, "created": job.created, "model": job.model_id,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def _id(job) -> str:
    return ("chatcmpl-" if job.kind == "chat" else "cmpl-") + job.id


def stream_chunk(job, index, text=None, first=False, finish_reason=None, tool_calls=None,
                 logprobs=None, tokenizer=None) -> dict:
    """One chunk of a stream for choice ``index``: new ``text`` (with the ``logprobs`` entries of
    the tokens that arrived since the last chunk, when asked for), or the end of the choice."""
    if job.kind == "completion":
        formatted = completion_logprobs(logprobs, tokenizer) if logprobs else None
        choice = {"index": index, "text": text or "", "logprobs": formatted,
                  "finish_reason": finish_reason}
        return _envelope(job, "text_completion", [choice], None)
    delta = {"role": "assistant", "content": ""} if first else {}
    if text:
        delta["content"] = text
    if tool_calls:
        delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(tool_calls)]
    formatted = chat_logprobs(logprobs, tokenizer) if logprobs else None
    choice = {"index": index, "delta": delta, "logprobs": formatted, "finish_reason": finish_reason}
    return _envelope(job, "chat.completion.chunk", [choice], None)


def usage_chunk(job, usage) -> dict:
    return _envelope(job, "chat.completion.chunk" if job.kind == "chat" else "text_completion", [],
                     usage)


def sse(data) -> bytes:
    """A server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _token_text(tokenizer, token) -> str:
    return tokenizer.decode([token])


def completion_logprobs(entries, tokenizer) -> dict:
    """The legacy completions format: parallel lists of tokens, their logprobs, top alternatives,
    offsets."""
    tokens = [_token_text(tokenizer, t) for t, _, _ in entries]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{_token_text(tokenizer, t): lp for t, lp in top}
                             for _, _, top in entries],
            "text_offset": offsets}


def chat_logprobs(entries, tokenizer) -> dict:
    def item(token, logprob):
        text = _token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**item(t, lp), "top_logprobs": [item(a, alp) for a, alp in top]}
                        for t, lp, top in entries]}
