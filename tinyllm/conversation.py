"""Talking to a run: the format its prompts are written in, and a conversation within its context
window.

**The format** (``prompt_format``). A run is prompted the way it was trained: an instruction-tuned
run with its template from config.json (Alpaca's sections, the reply ending at <|endoftext|>); a
model imported from Hugging Face with its own chat template (ChatML, Llama 3, a Jinja program); a
base run with plain lines, the reply being the next line.

**The history** (``ChatHistory``). A model sees at most ``block_size`` tokens, and its reply needs
room too. So each prompt is the new message after as many of the latest turns as fit in a ``budget``
(``tinyllm chat`` keeps ``max_new_tokens`` free, and at least half the context for the prompt): when
the conversation outgrows it, the oldest turns drop out first — a sliding window, as in llama.cpp's
and most chat interfaces' history. A dropped turn stays dropped (the window only moves forward), and
a single message longer than the budget keeps only its last tokens. The model then no longer knows
what was said in those turns: a name given in the first message is gone once the first turn is.
``ChatHistory`` does that bookkeeping in one place and says what it dropped, so ``tinyllm chat`` can
tell the user and the long-dialogue check (``tinyllm.safety.dialogue``) can test it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass
class PromptFormat:
    """How a run is prompted, as it was trained, and where its replies end."""
    description: str
    encode: object                # a record {"instruction", "input"} → the prompt's token ids
    stop_ids: tuple               # tokens that end a reply
    stop_text: str | None         # text that ends a reply too (a base run answers with one line)
    instruction_tuned: bool
    # tinyllm.serve.chat.ChatTemplate: the run's instruction template or plain lines
    turns: object
    # tinyllm.chat_template.ChatTemplate, used instead of ``turns`` when present
    chat_template: object = None

    def reply_text(self, generated: str) -> str:
        """A reply as generated → as shown: leading whitespace dropped, cut at the stop text,
        stripped."""
        text = generated.lstrip()
        return (text.split(self.stop_text)[0] if self.stop_text else text).strip()

    def history(self, tokenizer, budget: int) -> "ChatHistory":
        """An empty conversation in this format whose prompts fit ``budget`` tokens."""
        encode = lambda text: tokenizer.encode(text, allowed_special="all")      # noqa: E731
        if self.chat_template is not None:
            return ChatHistory(templated_turns(encode, self.chat_template), budget)
        return ChatHistory(concatenated_turns(encode, self.turns.user, self.turns.separator),
                           budget)


def prompt_format(run_dir, tokenizer, config: dict) -> PromptFormat:
    """The run's instruction template (config.json "template"), else its chat template, else plain
    lines."""
    from .chat_template import load_chat_template
    from .data.instructions import TEMPLATES, encode_prompt, end_token, user_message
    from .rl.data import encode_text
    from .serve.chat import ChatTemplate, end_token_ids
    stops = set(end_token_ids(tokenizer, config))
    template = config.get("template")
    turns = ChatTemplate(template)
    if isinstance(template, dict) and template.get("name") in TEMPLATES:
        name = template["name"]
        return PromptFormat(f"the {name} instruction template",
                            lambda r: encode_prompt(tokenizer, r, name),
                            tuple(sorted(stops | {end_token(tokenizer, name).id})), turns.stop_text,
                            True, turns)
    run = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    chat = load_chat_template(run, tokenizer) if template is None else None
    if chat is not None:
        specials = getattr(tokenizer, "special_tokens", None) or {}
        stops |= {specials[t] for t in chat.stop_tokens if t in specials}
        return PromptFormat("the model's chat template",
                            lambda r: encode_prompt(tokenizer, r, chat),
                            tuple(sorted(stops)), None, True, turns, chat)
    return PromptFormat(turns.describe(), lambda r: encode_text(tokenizer,
                                                                turns.user(user_message(r))),
                        tuple(sorted(stops)), turns.stop_text, turns.instruction_tuned, turns)


def reply_budget(block_size: int, max_new_tokens: int) -> int:
    """The most tokens a chat prompt may have: the context less room for the reply, at least half of
    it."""
    return max(block_size - max_new_tokens, block_size // 2)


class ChatHistory:
    """Turns so far and the prompt for the next reply.

    ``render(turns, message)`` → the prompt's token ids for the earlier ``turns`` (a list of (user
    message, reply) pairs) followed by the new user ``message``; ``budget``: the most tokens a
    prompt may have."""

    def __init__(self, render, budget: int):
        if budget < 1:
            raise ValueError(f"a chat history needs a budget of at least one token, got {budget}")
        self.render, self.budget = render, budget
        self.turns: list[tuple[str, str]] = []      # every (message, reply), oldest first
        self.dropped = 0                            # the oldest turns no longer in any prompt
        # tokens cut from the start of the last prompt itself
        self.cut = 0

    @property
    def kept(self) -> list[tuple[str, str]]:
        return self.turns[self.dropped:]

    def prompt(self, message: str) -> list[int]:
        """The ids of the prompt for ``message``: drops the oldest turns until it fits the
        budget."""
        while True:
            ids = self.render(self.kept, message)
            if len(ids) <= self.budget or self.dropped == len(self.turns):
                break
            self.dropped += 1
        self.cut = max(len(ids) - self.budget, 0)
        return ids[self.cut:]

    def add(self, message: str, reply: str) -> None:
        self.turns.append((message, reply))

    def reset(self) -> None:
        self.turns, self.dropped, self.cut = [], 0, 0


def concatenated_turns(encode, user_prompt, separator: str):
    """``render`` for a run whose turns are plain text one after another: each turn is
    ``user_prompt(message)`` then the reply and ``separator``, encoded turn by turn (and remembered,
    so a long conversation is not re-encoded for every reply)."""
    @lru_cache(maxsize=1024)
    def turn_ids(message: str, reply: str) -> tuple:
        return tuple(encode(user_prompt(message)) + encode(reply + separator))

    def render(turns, message: str) -> list[int]:
        return [t for message_reply in turns
                for t in turn_ids(*message_reply)] + encode(user_prompt(message))
    return render


def templated_turns(encode, template):
    """``render`` for a run with a chat template (``tinyllm.chat_template``): the whole conversation
    is rendered as messages, then encoded."""
    def render(turns, message: str) -> list[int]:
        messages = [m for user, reply in turns for m in ({"role": "user", "content": user},
                                                          {"role": "assistant", "content": reply})]
        return encode(template.render(messages + [{"role": "user", "content": message}]))
    return render
