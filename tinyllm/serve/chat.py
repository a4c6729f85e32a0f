"""From chat messages to a prompt, and from generated text back to a reply or a tool call.

A model sees only text. OpenAI's chat format (a list of {"role", "content"} messages, optional
tools) is turned into the text the run was trained on:

- **instruction-tuned runs** (config.json has a ``"template"``, as ``tinyllm finetune instruct``
  writes): each user message fills the template's ``{instruction}`` field, each assistant reply
  follows it and ends with the template's separator, exactly as ``tinyllm chat`` builds a
  conversation. System messages go first.
- **base runs**: plain concatenation, one message per line; the reply is the model's next line.

Tool calls have their own markup, which a model learns from data (``tinyllm.data.tool_problems``)::

    <tool_call>{"name":"calculator","arguments":{"expression":"37*48"}}</tool_call><tool_result>1776</tool_result>1776

When a request offers tools, the user message gets a line ``Tools: calculator`` (the names offered),
the model may write a call, and generation stops at ``</tool_call>``. The call is parsed strictly: a
JSON object with exactly a known tool "name" and an "arguments" object, or it is not a call and the
text is returned as it is. The client runs the tool and sends the result back as a "tool" message,
which becomes the ``<tool_result>`` that the model reads before writing its answer.
"""

from __future__ import annotations

import json
import secrets

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_RESULT, TOOL_RESULT_END = "<tool_result>", "</tool_result>"
END_OF_TEXT = "<|endoftext|>"


def tools_line(names) -> str:
    """The line that tells the model which tools it may call (added to the user's message)."""
    return "Tools: " + ", ".join(names)


def format_tool_call(name: str, arguments: dict) -> str:
    return TOOL_CALL + json.dumps({"name": name, "arguments": arguments},
                                  separators=(",", ":")) + TOOL_CALL_END


def format_tool_result(content: str) -> str:
    return f"{TOOL_RESULT}{content}{TOOL_RESULT_END}"


def parse_tool_call(text: str, tool_names):
    """The call in ``text`` (what follows ``<tool_call>``, the end marker already cut off) as an
    OpenAI ``tool_calls`` entry, or None when it is not exactly {"name": <offered tool>,
    "arguments": {...}}."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(call, dict) and set(call) == {"name",
                                                     "arguments"} and call["name"] in tool_names
            and isinstance(call["arguments"], dict)):
        return None
    return {"id": "call_" + secrets.token_hex(12), "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}


def end_token_ids(tokenizer, run_config) -> list[int]:
    """<|endoftext|> if the tokenizer has it, and the run's ``"end_token"`` (set by instruction
    finetuning) when that is a single token: generation ends at either."""
    special, ids = getattr(tokenizer, "special_tokens", None) or {}, set()
    if END_OF_TEXT in special:
        ids.add(special[END_OF_TEXT])
    end = run_config.get("end_token")
    if isinstance(end, str) and end:
        encoded = tokenizer.encode(end, allowed_special="all")
        if len(encoded) == 1:
            ids.add(encoded[0])
    return sorted(ids)


class ChatTemplate:
    """How a run's chat turns become text (see the module docstring)."""

    def __init__(self, template=None):
        if template is None:
            self.name, self.prompt = "plain", "{instruction}\n"
            self.separator, self.stop_text = "\n", "\n"
        elif isinstance(template, str):
            self.name, self.prompt = "custom", template
            self.separator, self.stop_text = "\n\n", None
        elif isinstance(template, dict) and isinstance(template.get("prompt"), str):
            self.name = template.get("name", "custom")
            self.prompt, self.separator = template["prompt"], template.get("separator", "\n\n")
            self.stop_text = template.get("stop")
        else:
            raise ValueError("config.json 'template' must be a string with {instruction} or an "
                             f"object with a 'prompt' string; got {template!r}")
        if "{instruction}" not in self.prompt:
            raise ValueError(f"the chat template {self.prompt!r} has no {{instruction}} field")
        self.instruction_tuned = template is not None

    def describe(self) -> str:
        if self.instruction_tuned:
            return f"{self.name} instruction template"
        return ("plain concatenation (a base model: one message per line, the reply is the next "
                "line)")

    def user(self, message: str) -> str:
        return self.prompt.replace("{instruction}", message)

    def render(self, messages, tool_names=(), call_prefix: str = "") -> str:
        """The prompt for the model's next reply. ``messages``: checked dicts with "role", "content"
        (a string) and, for an assistant, "tool_calls". ``tool_names``: the tools offered.
        ``call_prefix``: text the reply is forced to begin with (``tool_choice`` "required" or a
        named function)."""
        text = "".join(m["content"] + self.separator for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        for i, message in enumerate(turns):
            following = turns[i + 1]["role"] if i + 1 < len(turns) else None
            if message["role"] == "user":
                content = message["content"]
                text += self.user(f"{content}\n{tools_line(tool_names)}" if tool_names else content)
            elif message["role"] == "tool":
                text += format_tool_result(message["content"])
            # assistant: calls, then its text
            else:
                for call in message.get("tool_calls") or ():
                    text += format_tool_call(call["function"]["name"],
                                             json.loads(call["function"]["arguments"]))
                text += message["content"] or ""
                if following not in ("tool", None):
                    text += self.separator
            if message["role"] == "tool" and following == "user":
                text += self.separator
        return text + call_prefix


class IncrementalText:
    """The text of a growing list of token ids, released piece by piece once it cannot change any
    more.

    Held back: an incomplete UTF-8 character at the end (decoded as "\\ufffd"), an end that could
    still grow into one of the ``stops`` strings, and everything from a ``marker`` on (a tool call
    being written). When a stop string appears, the text ends just before it and ``stopped`` names
    it."""

    def __init__(self, tokenizer, stops=(), marker: str | None = None, prefix: str = ""):
        self.tokenizer, self.stops, self.marker = tokenizer, [s for s in stops if s], marker
        # forced text the prompt already ends with (part of the reply)
        self.prefix = prefix
        self.ids, self.text, self.released, self.stopped = [], prefix, 0, None

    def add(self, token: int) -> str:
        """Append a token; return the newly released text."""
        self.ids.append(token)
        text = self.prefix + self.tokenizer.decode(self.ids)
        first = min(((text.find(s), s) for s in self.stops if s in text), default=None)
        if first is not None:
            self.text, self.stopped = text[:first[0]], first[1]
            return self._release(len(self.text))
        self.text = text
        return self._release(len(text) - self._holdback(text))

    def finish(self) -> str:
        """Everything not yet released (up to the marker, if there is one)."""
        return self._release(len(self.text))

    @property
    def call_text(self):
        """What follows the marker, or None when the text has no marker."""
        if self.marker is None or self.marker not in self.text:
            return None
        return self.text[self.text.index(self.marker) + len(self.marker):]

    def _holdback(self, text: str) -> int:
        held = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stops + ([self.marker] if self.marker else []):
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _release(self, end: int) -> str:
        if self.marker is not None and self.marker in self.text:
            end = min(end, self.text.index(self.marker))
        new = self.text[self.released:end] if end > self.released else ""
        self.released = max(self.released, end)
        return new
