"""Chat templates: a conversation (a list of {"role", "content"} messages) → the exact text a chat
model was trained on, e.g. ChatML (SmolLM2, Qwen2):

    <|im_start|>user\\nHello!<|im_end|>\\n<|im_start|>assistant\\n        ← add_generation_prompt: the reply follows

A Hugging Face model ships its template as a Jinja program in ``tokenizer_config.json``
(``"chat_template"``). With the optional ``jinja2`` package (extra ``[hf]``) it is rendered the way
``transformers``' ``apply_chat_template`` does: a sandboxed, immutable environment with
``trim_blocks`` and ``lstrip_blocks``, the variables ``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token`` and a ``raise_exception(message)`` function. Without ``jinja2``, two
built-in templates cover most small models — ChatML and Llama 3's header format —, picked by the
special tokens the tokenizer has.
"""

from __future__ import annotations

from pathlib import Path

from .files import read_json

CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")
LLAMA3_STOPS = ("<|eot_id|>", "<|end_of_text|>")


def _token_text(value):
    """tokenizer_config.json writes a token as a string or as {"content": "..."} (an AddedToken)."""
    return value.get("content") if isinstance(value, dict) else value


class ChatTemplate:
    """``render(messages, add_generation_prompt=True)`` → text; ``stop_tokens``:
    the strings that end a reply."""

    def __init__(self, source: str | None = None, kind: str = "jinja", bos_token: str = "",
                 eos_token: str = ""):
        if kind not in ("jinja", "chatml", "llama3"):
            raise ValueError(f"unknown chat template kind {kind!r}")
        self.source, self.kind = source, kind
        self.bos_token, self.eos_token = bos_token or "", eos_token or ""
        stops = {"chatml": CHATML_STOPS,
                 "llama3": LLAMA3_STOPS}.get(kind, CHATML_STOPS + LLAMA3_STOPS)
        self.stop_tokens = tuple(
            dict.fromkeys(([self.eos_token] if self.eos_token else []) + list(stops))
        )
        self._compiled = _compile(source) if kind == "jinja" else None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise ValueError(f"message {i} must be {{'role': str, 'content': str}}, "
                                 f"got {message!r}")
        if self.kind == "chatml":
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
        if self.kind == "llama3":
            text = self.bos_token + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                                            f"{m['content'].strip()}<|eot_id|>" for m in messages)
            return text + (
                "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
            )
        return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token, eos_token=self.eos_token)


def _compile(source: str):
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("rendering a model's own chat_template needs jinja2: pip "
                          "install 'tinyllm[hf]'") from None

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise ValueError(f"the chat_template does not compile: {e}") from None


def builtin_kind(special_tokens) -> str | None:
    """"chatml" or "llama3" when the tokenizer has that format's special tokens, else None."""
    if "<|im_start|>" in special_tokens and "<|im_end|>" in special_tokens:
        return "chatml"
    if "<|start_header_id|>" in special_tokens and "<|eot_id|>" in special_tokens:
        return "llama3"
    return None


def jinja_available() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


def load_chat_template(directory, tokenizer=None) -> ChatTemplate | None:
    """The chat template of a model directory or run: ``tokenizer_config.json``'s ``chat_template``
    (rendered with jinja2 when installed), else a built-in one matching the tokenizer's special
    tokens, else None."""
    config_file = Path(directory) / "tokenizer_config.json"
    config = read_json(config_file, what="tokenizer config") if config_file.exists() else {}
    source = config.get("chat_template")
    # [{"name": "default", "template": ...}, {"name": "tool_use"}]
    if isinstance(source, list):
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    bos = _token_text(config.get("bos_token")) or ""
    eos = _token_text(config.get("eos_token")) or ""
    special = getattr(tokenizer, "special_tokens", {}) if tokenizer is not None else {}
    kind = builtin_kind(special)
    if source and (jinja_available() or kind is None):
        return ChatTemplate(source, "jinja", bos, eos)
    if kind == "llama3" and not bos and "<|begin_of_text|>" in special:
        bos = "<|begin_of_text|>"
    return ChatTemplate(None, kind, bos, eos) if kind else None


__all__ = ["ChatTemplate", "load_chat_template", "builtin_kind", "jinja_available"]
