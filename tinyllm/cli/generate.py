"""``tinyllm generate`` (continue a prompt, streaming) and ``tinyllm chat`` (an interactive loop).

Text is printed as it is produced. A byte-level BPE token can end in the middle of a multi-byte
UTF-8 character, so each step decodes the whole generated sequence and prints only the new suffix,
holding it back while it ends in an incomplete character (decoded as U+FFFD "�").

Chat uses the run's instruction template when its ``config.json`` has a ``"template"`` key: either a
format string with an ``{instruction}`` field (the model's reply follows it), or an object
``{"prompt": "...{instruction}...", "separator": "\\n\\n", "stop": "..."}``, which is what
``tinyllm finetune instruct`` writes (``tinyllm.data.instructions.chat_template``). Replies also end
at the run's ``"end_token"``.
A run whose config.json lists ``"tools": ["calculator"]`` (``examples/13_tools.py``) is offered the
calculator with each message; when it writes a call, chat runs it (``tinyllm.serve.tools``, an
arithmetic parser, never ``eval``), prints the result and lets the model finish its answer.
A run imported from Hugging Face chats with the model's own template instead
(``tinyllm.chat_template``: ``tokenizer_config.json``'s ``chat_template`` rendered with jinja2, or
built-in ChatML / Llama 3), and ``generate --chat`` wraps the prompt as one user message in it.
Without a template, chat is plain continuation: your line is appended to the conversation and the
model continues it up to the end of a line.
"""

from __future__ import annotations

import sys
import time

from .common import (add_filter_flags, non_negative_float, non_negative_int, output_filter,
                     positive_float, positive_int, top_p)
from ..serve.chat import end_token_ids as _stop_ids     # <|endoftext|> and the run's "end_token"

END_OF_TEXT = "<|endoftext|>"
CHAT_COMMANDS = "Commands: /reset forgets the conversation, /quit leaves, /help shows this."


def add_commands(sub) -> None:
    p = sub.add_parser("generate",
                       help="continue a prompt with a trained model, streaming the text",
                       description="Continue --prompt with the model in --ckpt. Text streams to "
                                   "stdout as it is produced; the token count and tokens/s go to "
                                   "stderr at the end.")
    p.add_argument("--ckpt", required=True, help="run directory (or its model.safetensors)")
    p.add_argument("--prompt", default="",
                   help="text to continue (empty: start from <|endoftext|> if the tokenizer has "
                        "it)")
    add_sampling_flags(p, max_new_tokens=200)
    p.add_argument("--beam", type=positive_int, default=None, metavar="N",
                   help="beam search with N beams instead of sampling (prints the best sequence "
                        "when done)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="with --beam: score = Σ log p / length^this")
    p.add_argument("--chat", action="store_true",
                   help="wrap --prompt as a user message in the model's chat "
                        "template (tokenizer_config.json's, or ChatML / Llama 3)")
    add_filter_flags(p)
    p.set_defaults(func=run_generate)

    p = sub.add_parser("chat", help="talk to a model: read lines from stdin, answer each one",
                       description="An interactive loop (works with piped stdin too). The "
                                   "conversation is kept within the model's context window by "
                                   "dropping the oldest turns. Commands: /reset forgets the "
                                   "conversation, /quit (or end of input) leaves, /help lists "
                                   "them; a line starting with / is never sent to the model.")
    p.add_argument("--ckpt", required=True, help="run directory (or its model.safetensors)")
    add_sampling_flags(p, max_new_tokens=128)
    add_filter_flags(p)
    p.set_defaults(func=run_chat)


def add_sampling_flags(p, max_new_tokens) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                   help="most tokens to generate")
    g.add_argument("--temperature", type=non_negative_float, default=0.8,
                   help="0 = greedy; lower is more conservative")
    g.add_argument("--top-k", type=non_negative_int, default=40,
                   help="sample among the k most likely tokens (0 = no limit)")
    g.add_argument("--top-p", type=top_p, default=None,
                   help="sample among the smallest set of tokens with mass ≥ p")
    g.add_argument("--repetition-penalty", type=positive_float, default=1.0,
                   help="> 1 makes tokens already seen less likely")
    g.add_argument("--seed", type=non_negative_int, default=None,
                   help="seed for reproducible sampling (None: a random one)")
    g.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context for every token (slow; for comparison)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="storage of the blocks' weight matrices; arithmetic stays float32 (16 "
                        "bits: half the memory, slower decoding; see tinyllm.half_weights)")


def _sampling_kwargs(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed,
                use_cache=not args.no_cache)


def _load(ckpt, dtype="float32"):
    from ..checkpoint import load_config, load_pretrained
    model, tokenizer = load_pretrained(ckpt)
    if tokenizer is None:
        raise FileNotFoundError(f"the run '{ckpt}' has no tokenizer file; generating text needs "
                                "one to turn text into ids")
    if dtype != "float32":
        from ..half_weights import store_half
        store_half(model, dtype)
    return model.eval(), tokenizer, load_config(ckpt)


class TextStream:
    """Prints the text of a growing list of token ids, one new suffix at a time.

    ``stop_text``: once the text contains it, the text is cut just before it and ``add`` returns
    True.
    ``strip_leading``: leading whitespace is not printed (a chat reply often starts with a newline).
    ``output_filter``: a ``tinyllm.safety.blocklist.FilterStream`` the printed text goes through;
    when it blocks, ``add`` returns True too. ``text`` is what the model wrote, ``shown`` what was
    printed.
    """

    def __init__(self, tokenizer, out=None, stop_text=None, strip_leading=False,
                 output_filter=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.stop_text, self.strip_leading, self.filter = stop_text, strip_leading, output_filter
        self.ids, self.text, self.printed, self._pending, self.shown = [], "", 0, None, ""

    @property
    def blocked(self):
        """The term the filter blocked the text at, or None."""
        return self.filter.blocked if self.filter is not None else None

    def add(self, token: int) -> bool:
        """Append a token and print the text that became complete; True when ``stop_text`` was
        reached or the filter blocked the text."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if self.strip_leading:
            text = text.lstrip()
        cut = text.find(self.stop_text) if self.stop_text else -1
        if cut >= 0:
            text = text[:cut]
        elif text.endswith("\ufffd") or self._could_become_stop(text):   # wait for the next token
            self._pending = text
            return False
        self.text, self._pending = text, None
        self._flush()
        return cut >= 0 or self.blocked is not None

    def _could_become_stop(self, text: str) -> bool:
        """Whether the text ends with the start of ``stop_text`` (printing it could print part of a
        stop)."""
        return bool(self.stop_text) and any(text.endswith(self.stop_text[:k])
                                            for k in range(1, len(self.stop_text)))

    def finish(self) -> None:
        """Print whatever is left (an incomplete character at the very end shows as "\ufffd")."""
        if self._pending is not None:
            self.text, self._pending = self._pending, None
        self._flush(final=True)

    def _flush(self, final: bool = False) -> None:
        new, self.printed = self.text[self.printed:], len(self.text)
        if self.filter is not None:
            new = self.filter.feed(new) + (self.filter.finish() if final else "")
        if new:
            self.shown += new
            self.out.write(new)
            self.out.flush()


def _report(count, seconds, extra="") -> None:
    rate = count / seconds if seconds > 0 else float("inf")
    print(f"\n[{count} tokens in {seconds:.2f}s: {rate:.1f} tokens/s{extra}]", file=sys.stderr)


def run_generate(args) -> int:
    from ..generate import beam_search, stream_generate
    from ..sampling import check_sampling_args
    check_sampling_args(args.temperature, args.top_k or None, args.top_p, args.repetition_penalty)
    new_filter = output_filter(args)
    model, tokenizer, config = _load(args.ckpt, args.dtype)
    stop_ids = _stop_ids(tokenizer, config)
    special = tokenizer.special_tokens
    start = [special[END_OF_TEXT]] if END_OF_TEXT in special else []
    if args.chat:
        template = _chat_template(args.ckpt, tokenizer, required=True)
        stop_ids = sorted(set(stop_ids) | set(_template_stop_ids(tokenizer, template)))
        args.prompt = template.render([{"role": "user", "content": args.prompt}])
    prompt_ids = tokenizer.encode(args.prompt, allowed_special="all") if args.prompt else start
    if not prompt_ids:
        raise ValueError("--prompt is empty and this tokenizer has no <|endoftext|> token to start "
                         "from; give a prompt")
    start = time.perf_counter()
    if args.beam is not None:
        results = beam_search(model, prompt_ids, args.beam, args.max_new_tokens,
                              args.length_penalty, stop_ids, use_cache=not args.no_cache)
        tokens, score = results[0]
        text, blocked = _filtered(tokenizer.decode(tokens), new_filter())
        print(args.prompt + text)
        _report(len(tokens), time.perf_counter() - start,
                f", best of {args.beam} beams, score {score:.3f}")
        _say_if_blocked(blocked)
        return 0
    sys.stdout.write(args.prompt)
    stream, count = TextStream(tokenizer, output_filter=new_filter()), 0
    for token in stream_generate(model, prompt_ids, args.max_new_tokens, stop_ids=stop_ids,
                                 **_sampling_kwargs(args)):
        count += 1
        if stream.add(token):
            break
    stream.finish()
    sys.stdout.write("\n")
    _report(count, time.perf_counter() - start, f", prompt {len(prompt_ids)} tokens")
    _say_if_blocked(stream.blocked)
    return 0


def _filtered(text: str, output_filter):
    """(``text`` through ``output_filter``, the term that blocked it or None); ``text`` itself
    without one."""
    if output_filter is None:
        return text, None
    return output_filter.filter_all(text), output_filter.blocked


def _say_if_blocked(term) -> None:
    if term is not None:
        print("[the output filter stopped the text before a blocked term]", file=sys.stderr)


# --------------------------------------------------------------------------------------------- chat

def _chat_template(ckpt, tokenizer, required=False):
    from pathlib import Path

    from ..chat_template import load_chat_template
    run = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    template = load_chat_template(run, tokenizer)
    if template is None and required:
        raise ValueError(f"'{ckpt}' has no chat template (no tokenizer_config.json chat_template, "
                         "and its tokenizer has neither ChatML's <|im_start|>/<|im_end|> nor Llama "
                         "3's header tokens)")
    return template


def _template_stop_ids(tokenizer, template) -> list[int]:
    return [tokenizer.special_tokens[t]
            for t in template.stop_tokens if t in tokenizer.special_tokens]


def _read_messages(history, interactive: bool):
    """The user's messages from stdin, handling /reset, /help and /quit (and any other /word)
    here."""
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:                            # end of input
            return
        message = line.rstrip("\n")
        command = message.strip()
        if command == "/quit":
            return
        if command == "/reset":
            history.reset()
            print("[conversation forgotten]", file=sys.stderr)
        elif command.startswith("/"):          # /help, and any other /word: ours, not the model's
            known = "" if command == "/help" else f"unknown command {command.split()[0]!r}. "
            print(f"[{known}{CHAT_COMMANDS}]", file=sys.stderr)
        elif command:
            yield message


def run_chat(args) -> int:
    from ..conversation import prompt_format, reply_budget
    from ..serve.chat import tools_line
    new_filter = output_filter(args)
    model, tokenizer, config = _load(args.ckpt, args.dtype)
    fmt = prompt_format(args.ckpt, tokenizer, config)
    history = fmt.history(tokenizer, reply_budget(model.config.block_size, args.max_new_tokens))
    mode = ("the model's chat template" if fmt.chat_template is not None else
            "instruction template" if fmt.instruction_tuned else "plain continuation")
    print(f"chat with {args.ckpt} ({mode}, context {model.config.block_size} tokens). "
          f"{CHAT_COMMANDS}",
          file=sys.stderr)
    sampling, interactive = _sampling_kwargs(args), sys.stdin.isatty()
    tools = [name
             for name in config.get("tools",
                                    [])
             if name == "calculator"] if fmt.chat_template is None else []
    for message in _read_messages(history, interactive):
        # the run was taught to call them (examples/13_tools.py)
        if tools:
            message = f"{message}\n{tools_line(tools)}"
        dropped = history.dropped
        prompt_ids = history.prompt(message)
        if history.dropped > dropped:
            print("[the conversation is longer than the context: the model no longer sees its "
                  f"first {history.dropped} "
                  f"turn{'s' if history.dropped > 1 else ''}]", file=sys.stderr)
        start = time.perf_counter()
        reply, count = _chat_reply(model, tokenizer, prompt_ids, fmt.stop_text, tools, fmt.stop_ids,
                                   sampling, args, new_filter)
        history.add(message, reply)
        if interactive:
            _report(count, time.perf_counter() - start)
    return 0


def _chat_reply(model, tokenizer, prompt_ids, stop_text, tools, stop_ids, sampling, args,
                new_filter=lambda: None):
    """Stream one reply; when the model writes a tool call, run it (``tinyllm.serve.tools``), print
    and append its result, and let the model go on. Returns (the reply as printed, tokens
    generated)."""
    from ..generate import stream_generate
    from ..serve.chat import TOOL_CALL, TOOL_CALL_END, format_tool_result, parse_tool_call
    from ..serve.tools import run_tool
    reply, count = "", 0
    for _ in range(4):                          # at most 3 tool calls per reply
        stream = TextStream(tokenizer, stop_text=TOOL_CALL_END if tools else stop_text,
                            strip_leading=not reply, output_filter=new_filter())
        for token in stream_generate(model, prompt_ids, args.max_new_tokens, stop_ids=stop_ids,
                                     **sampling):
            if stream.add(token):
                break
        stream.finish()
        count += len(stream.ids)
        reply += stream.shown
        if stream.blocked is not None:
            _say_if_blocked(stream.blocked)
            break
        call_text = stream.text.partition(TOOL_CALL)[2] if TOOL_CALL in stream.text else None
        call = parse_tool_call(call_text, tools) if call_text is not None else None
        if call is None:
            break
        result = run_tool(call["function"]["name"], call["function"]["arguments"])
        sys.stdout.write(f"{TOOL_CALL_END} → {result}\n")
        reply += TOOL_CALL_END + format_tool_result(result)
        prompt_ids = prompt_ids + tokenizer.encode(stream.text + TOOL_CALL_END
                                                   + format_tool_result(result),
                                                   allowed_special="all")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return reply.strip(), count
