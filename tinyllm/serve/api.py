"""The OpenAI request format, checked field by field, and the error format.

Every problem with a request becomes an ``APIError`` that the server sends as OpenAI does::

    HTTP 400  {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature",
    "code": null}}

Statuses: 400 bad request, 401 wrong or missing API key, 404 unknown model or path, 405 wrong
method, 411 no Content-Length, 413 body too large, 429 too many requests waiting, 500 the model
failed.

Fields the server does not implement are refused (400) unless they are at a value that changes
nothing (``presence_penalty: 0``, ``logit_bias: {}``...), so a client never silently gets something
other than what it asked for. Unknown fields are refused too, naming them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

MISSING = object()
TYPES = {"string": str, "integer": numbers.Integral, "number": numbers.Real, "boolean": bool,
         "array": list, "object": dict}
# Accepted only at their neutral value: what each must equal for the request to mean what it says.
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "user": None,
           "suffix": None,
           "echo": False, "best_of": 1, "parallel_tool_calls": None, "service_tier": None,
           "store": None, "metadata": None}
SAMPLING_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n",
                   "stream", "stream_options", "logprobs"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt"}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "tools",
                                 "tool_choice"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None,
                 code=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def get(body: dict, name: str, kind: str, default=MISSING, check=None, hint: str = ""):
    """``body[name]``, which must be a JSON ``kind`` (and pass ``check``); ``default`` when absent
    or null."""
    value = body.get(name)
    if value is None:
        if default is MISSING:
            raise APIError(400, f"'{name}' is required", param=name, code="missing_field")
        return default
    wrong_type = (not isinstance(value, TYPES[kind])
                  or (kind in ("integer", "number") and isinstance(value, bool)))
    if wrong_type:
        raise APIError(400, f"'{name}' must be a{'n' if kind[0] in 'aeiou' else ''} {kind}, got "
                            f"{value!r}"[:300],
                       param=name, code="invalid_type")
    if check is not None and not check(value):
        raise APIError(400, f"'{name}' {hint}, got {value!r}"[:300], param=name,
                       code="invalid_value")
    return value


def check_fields(body: dict, allowed: set) -> None:
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name in sorted(set(body) - allowed):
        if name not in NEUTRAL:
            raise APIError(400, f"unknown field '{name}'", param=name, code="unknown_field")
        if body[name] not in (NEUTRAL[name], None):
            raise APIError(400, f"'{name}' is not supported by this server (only "
                                f"{NEUTRAL[name]!r})", param=name,
                           code="unsupported_value")


@dataclass
class Limits:
    """What one request may ask of the server."""
    context: int                 # the model's block_size: prompt + max_tokens must fit
    max_tokens: int              # the most tokens a request may generate
    max_n: int                   # the most sequences per request
    max_stop: int = 4


@dataclass
class Sampling:
    """The sampling fields shared by both endpoints, checked."""
    max_tokens: int | None
    temperature: float
    top_p: float | None
    top_k: int | None
    seed: int | None
    n: int
    stop: list = field(default_factory=list)
    stream: bool = False
    include_usage: bool = True


def parse_sampling(body: dict, limits: Limits, max_tokens_field: str = "max_tokens") -> Sampling:
    max_tokens = get(body, max_tokens_field, "integer", None, lambda v: v >= 1, "must be >= 1")
    stop = get(body, "stop", "string" if isinstance(body.get("stop"), str) else "array", [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > limits.max_stop or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of at most "
                            f"{limits.max_stop} of them",
                       param="stop", code="invalid_value")
    top_k = get(body, "top_k", "integer", None, lambda v: v >= -1,
                "must be >= 1 (0 or -1: no limit)")
    options = get(body, "stream_options", "object", {})
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(get(body, "temperature", "number", 1.0, lambda v: 0 <= v <= 2,
                              "must be between 0 and 2")),
        top_p=_none_if(float(get(body, "top_p", "number", 1.0, lambda v: 0 < v <= 1,
                                 "must be in (0, 1]")), 1.0),
        top_k=top_k if top_k and top_k > 0 else None,
        seed=get(body, "seed", "integer", None, lambda v: 0 <= v < 2 ** 63,
                 "must be a non-negative integer"),
        n=get(body, "n", "integer", 1, lambda v: 1 <= v <= limits.max_n,
              f"must be between 1 and {limits.max_n}"),
        stop=stop, stream=get(body, "stream", "boolean", False),
        include_usage=bool(options.get("include_usage", True)))


def _none_if(value, neutral):
    return None if value == neutral else value


def check_model(body: dict, model_id: str) -> None:
    name = get(body, "model", "string")
    if name != model_id:
        raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_id}'",
                       param="model", code="model_not_found")


def check_room(prompt_tokens: int, sampling: Sampling, limits: Limits, default_tokens: int,
               param: str) -> int:
    """The number of tokens to generate: ``max_tokens`` (or ``default_tokens``), at most what the
    context has left after the prompt. Asking for more than the whole context is an error; asking
    for more than the prompt leaves is not: the reply ends when the context is full, with
    finish_reason "length" (as in llama.cpp's server), so a chat page need not count the
    conversation's tokens."""
    room = limits.context - prompt_tokens
    if sampling.max_tokens is not None and sampling.max_tokens > limits.context:
        raise APIError(400, f"max_tokens is {sampling.max_tokens}, but this model's context is "
                            f"only {limits.context} tokens (prompt and reply "
                            "together)", param="max_tokens", code="context_length_exceeded")
    if sampling.max_tokens is not None and sampling.max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens can be at most {limits.max_tokens} on this server, got "
                            f"{sampling.max_tokens}",
                       param="max_tokens", code="invalid_value")
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens, but this model's context is "
                            f"{limits.context} tokens and the reply needs at least "
                            "one", param=param, code="context_length_exceeded")
    return min(default_tokens if sampling.max_tokens is None else sampling.max_tokens, room,
               limits.max_tokens)


# ------------------------------------------------------------------------------------ chat-specific

ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_messages(body: dict) -> list[dict]:
    """Messages as {"role", "content" (a string), "tool_calls"}; "developer" counts as "system"."""
    messages = get(body, "messages", "array", check=lambda v: len(v) > 0, hint="must not be empty")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(400, f"{where} must be an object with a 'role' among {ROLES}",
                           param=where, code="invalid_value")
        role = "system" if message["role"] == "developer" else message["role"]
        calls = message.get("tool_calls") if role == "assistant" else None
        content = _content_text(message.get("content"), f"{where}.content", optional=bool(calls))
        checked.append({"role": role, "content": content,
                        "tool_calls": _check_calls(calls, where) if calls else None})
    return checked


def _content_text(content, where: str, optional: bool) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if content is None and optional:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(400,
                   f"{where} must be a string or a list of text parts (this model reads text only)",
                   param=where, code="invalid_type")


def _check_calls(calls, where: str) -> list:
    import json
    if not isinstance(calls, list):
        raise APIError(400, f"{where}.tool_calls must be an array", param=f"{where}.tool_calls",
                       code="invalid_type")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        try:
            ok = isinstance(function.get("name"),
                            str) and isinstance(json.loads(function.get("arguments")), dict)
        except (AttributeError, TypeError, ValueError):
            ok = False
        if not ok:
            raise APIError(400, f"{where}.tool_calls[{j}] must have a function with a 'name' and "
                                "JSON-object "
                                "'arguments'", param=f"{where}.tool_calls", code="invalid_value")
    return calls


def parse_tools(body: dict):
    """(names of the tools offered, the forced tool name or "" for any or None for no forcing).
    ``tool_choice``: "auto" (default), "none" (no tools), "required", or {"type": "function",
    "function": {"name"}}."""
    tools = get(body, "tools", "array", [])
    names = []
    for i, tool in enumerate(tools):
        is_function = isinstance(tool, dict) and tool.get("type") == "function"
        function = tool.get("function") if is_function else None
        if not isinstance(function, dict) or not isinstance(function.get("name"),
                                                            str) or not function["name"]:
            raise APIError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                                "{\"name\": ...}}",
                           param=f"tools[{i}]", code="invalid_value")
        names.append(function["name"])
    choice = body.get("tool_choice", "auto" if names else "none")
    if choice == "none":
        return [], None
    if choice == "auto" or choice == "required":
        if not names:
            raise APIError(400, f"tool_choice '{choice}' needs 'tools'", param="tool_choice",
                           code="invalid_value")
        return names, "" if choice == "required" else None
    forced = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if forced not in names:
        raise APIError(400,
                       "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                       "\"function\": {\"name\": <one of the tools>}}", param="tool_choice",
                       code="invalid_value")
    return names, forced
