"""What the server does with a request, apart from HTTP: check it, turn it into token ids, run it on
the engine, and shape the result as OpenAI's JSON (a whole response, or the chunks of a stream).

    body ──prepare_completion / prepare_chat──► Job ──run_job──► choice events ──► response | chunks

A ``Job`` holds one request's choices; each choice turns its tokens into text with an
``IncrementalText`` (so stop strings and a tool call being written are never streamed half-way) and
ends with a
``finish_reason``: "stop" (end token or stop string), "length" (max_tokens) or "tool_calls".

With a blocklist (``tinyllm serve --filter FILE``), each choice's released text also goes through a
``FilterStream`` (``tinyllm.safety.blocklist``): blocked terms are masked, or in block mode the
choice ends before the first one with OpenAI's finish_reason "content_filter". Log-probabilities are
then refused, since the tokens they list would show the text the filter removed.
"""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass, field

from .api import (APIError, CHAT_FIELDS, COMPLETION_FIELDS, Limits, check_fields, check_model,
                  check_room, get, parse_messages, parse_sampling, parse_tools)
from .chat import (TOOL_CALL, TOOL_CALL_END, ChatTemplate, IncrementalText, end_token_ids,
                   parse_tool_call)
from .engine import Engine, QueueFull, Request, SamplingParams
from ..safety.blocklist import FilterStream

@dataclass
class Choice:
    text: IncrementalText
    tokens: int = 0                       # generated tokens, an end token included
    finish_reason: str | None = None
    tool_calls: list | None = None
    # (token id, logprob, [(id, logprob)] top) per token
    logprobs: list = field(default_factory=list)
    filter: FilterStream | None = None                # the output filter, when the server has one
    shown: str = ""                                   # the text released to the client (filtered)


@dataclass
class Job:
    kind: str                             # "chat" or "completion"
    request: Request
    prompt_tokens: int
    choices: list
    stream: bool
    include_usage: bool
    tool_names: list
    logprobs: int | None                  # top alternatives per token, or None for no logprobs
    model_id: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


class Service:
    """A loaded model behind the OpenAI API: ``model_id`` is the name clients pass as "model"."""

    def __init__(self, model, tokenizer, run_config: dict, model_id: str, max_batch: int = 8,
                 max_queue: int = 64,
                 max_tokens: int | None = None, blocklist=None, filter_mode: str = "mask"):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.blocklist, self.filter_mode = blocklist, filter_mode
        if blocklist is not None:
            # checks the mode now, not at the first request
            FilterStream(blocklist, filter_mode)
        self.template = ChatTemplate(run_config.get("template"))
        self.stop_ids = frozenset(end_token_ids(tokenizer, run_config))
        context = model.config.block_size
        self.limits = Limits(context=context, max_tokens=min(max_tokens or context, context),
                             max_n=max_batch)
        self.engine = Engine(model, max_batch, max_queue)

    def start(self) -> "Service":
        self.engine.start()
        return self

    def close(self) -> None:
        self.engine.close()

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.model_id, "object": "model", "created": 0, "owned_by": "tinyllm",
            "context_length": self.limits.context, "chat_format": self.template.describe(),
            "instruction_tuned": self.template.instruction_tuned}]}

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, **self.engine.stats()}

    # ---------------------------------------------------------------------------------- preparing

    def prepare_completion(self, body) -> Job:
        check_fields(body, COMPLETION_FIELDS)
        check_model(body, self.model_id)
        sampling = parse_sampling(body, self.limits)
        prompt = body.get("prompt")
        if isinstance(prompt, str) and prompt:
            prompt_ids = self.tokenizer.encode(prompt, **_allow_special(self.tokenizer, "all"))
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t,
                                                                                               bool)
                                                          and 0 <= t < self.model.config.vocab_size
                                                         for t in prompt):
            prompt_ids = list(prompt)
        else:
            raise APIError(400, "'prompt' must be a non-empty string or a list of token ids of "
                                "this model "
                                f"(0..{self.model.config.vocab_size - 1})", param="prompt",
                           code="missing_field" if prompt is None else "invalid_value")
        logprobs = get(body, "logprobs", "integer", None, lambda v: 0 <= v <= 5,
                       "must be between 0 and 5")
        return self._job("completion", prompt_ids, sampling, 16, logprobs, "prompt")

    def prepare_chat(self, body) -> Job:
        check_fields(body, CHAT_FIELDS)
        check_model(body, self.model_id)
        messages = parse_messages(body)
        field_name = ("max_completion_tokens" if body.get("max_completion_tokens") is not None
                      else "max_tokens")
        sampling = parse_sampling(body, self.limits, field_name)
        tool_names, forced = parse_tools(body)
        prefix = forced_call_prefix(forced)
        text = self.template.render(messages, tool_names, prefix)
        prompt_ids = self.tokenizer.encode(text, **_allow_special(self.tokenizer, "none"))
        want_logprobs = get(body, "logprobs", "boolean", False)
        top = get(body, "top_logprobs", "integer", 0, lambda v: 0 <= v <= 20,
                  "must be between 0 and 20")
        stops = sampling.stop + ([self.template.stop_text] if self.template.stop_text else [])
        job = self._job("chat", prompt_ids, sampling, self.limits.max_tokens,
                        top if want_logprobs else None,
                        "messages", stops + ([TOOL_CALL_END] if tool_names else []), tool_names,
                        prefix)
        return job

    def _job(self, kind, prompt_ids, sampling, default_tokens, logprobs, param, stops=None,
             tool_names=(), prefix="") -> Job:
        max_tokens = check_room(len(prompt_ids), sampling, self.limits, default_tokens, param)
        if self.blocklist is not None and logprobs is not None:
            raise APIError(400, "this server filters its output, so it gives no logprobs (their "
                                "tokens would show the filtered "
                                "text)", param="logprobs", code="unsupported_value")
        params = SamplingParams(max_tokens, sampling.temperature, sampling.top_k, sampling.top_p,
                                sampling.seed, self.stop_ids, logprobs)
        stops = sampling.stop if stops is None else stops
        marker = TOOL_CALL if tool_names else None
        choices = [Choice(IncrementalText(self.tokenizer, stops, marker, prefix),
                          filter=FilterStream(self.blocklist,
                                              self.filter_mode) if self.blocklist else None)
                   for _ in range(sampling.n)]
        return Job(kind, Request(prompt_ids, params, sampling.n), len(prompt_ids), choices,
                   sampling.stream,
                   sampling.include_usage, list(tool_names), logprobs, self.model_id)

    # ------------------------------------------------------------------------------------- running

    def run_job(self, job: Job, client_gone=lambda: False):
        """Submit the job and yield (choice index, new text) as text is released, then (index, None)
        when a choice ends. ``client_gone()`` is polled while waiting: when it says True the request
        is cancelled (its rows leave the batch before the next step) and the generator stops."""
        try:
            self.engine.submit(job.request)
        except QueueFull as e:
            raise APIError(429, str(e), type="server_busy", code="queue_full") from None
        open_choices = set(range(len(job.choices)))
        try:
            while open_choices:
                try:
                    event = job.request.events.get(timeout=0.05)
                except queue.Empty:
                    if client_gone():
                        return
                    continue
                yield from self._handle(job, event, open_choices)
        finally:
            # a no-op for a finished request; frees the rows otherwise
            job.request.cancel()

    def _handle(self, job, event, open_choices):
        if event[0] == "error":
            raise APIError(500, f"generation failed: {event[1]}", type="server_error")
        index = event[1]
        if index not in open_choices:          # a choice already ended by its stop text
            return
        choice = job.choices[index]
        if event[0] == "done":
            if event[2] == "stop":             # the end token: generated, so counted, but not text
                choice.tokens += 1
            else:
                choice.finish_reason = "length"
            yield from self._finish(job, index, open_choices)
            return
        token, logprobs = event[2], event[3]
        choice.tokens += 1
        if logprobs is not None:
            choice.logprobs.append((token, *logprobs))
        new_text = self._release(choice, choice.text.add(token))
        if new_text:
            yield index, new_text
        if choice.text.stopped is not None or choice.finish_reason == "content_filter":
            yield from self._finish(job, index, open_choices)

    def _finish(self, job, index, open_choices):
        choice = job.choices[index]
        open_choices.discard(index)
        job.request.stop_row(index)
        rest = choice.text.finish()
        call_text = choice.text.call_text
        if call_text is not None and choice.finish_reason != "content_filter":
            call = parse_tool_call(call_text,
                                   job.tool_names) if choice.text.stopped == TOOL_CALL_END else None
            if call is not None:
                choice.tool_calls, choice.finish_reason = [call], "tool_calls"
            # not a well-formed call: the text is the reply, as written
            else:
                rest += choice.text.text[choice.text.released:] + (choice.text.stopped or "")
        rest = self._release(choice, rest, final=True)
        if choice.finish_reason is None:
            choice.finish_reason = "stop"
        if rest:
            yield index, rest
        yield index, None

    @staticmethod
    def _release(choice, text: str, final: bool = False) -> str:
        """``text`` as the client gets it: through the choice's output filter, if any (which may end
        the
        choice: finish_reason "content_filter")."""
        if choice.filter is not None:
            text = choice.filter.feed(text) + (choice.filter.finish() if final else "")
            if choice.filter.blocked is not None:
                choice.finish_reason = "content_filter"
        choice.shown += text
        return text

    def usage(self, job: Job) -> dict:
        completion = sum(c.tokens for c in job.choices)
        return {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
                "total_tokens": job.prompt_tokens + completion}


def _allow_special(tokenizer, which) -> dict:
    """``encode``'s keyword for tokenizers that have special tokens (a character tokenizer has
    none)."""
    return {"allowed_special": which} if getattr(tokenizer, "special_tokens", None) else {}


def forced_call_prefix(forced) -> str:
    """The start of the reply when ``tool_choice`` forces a call: "" (not forced), the opening of
    any call (forced == ""), or of a call to the named tool. Each ends just before a letter, where a
    regex-split BPE tokenizer starts a new chunk: a prefix cut inside a run of punctuation (after
    "<tool_call>" but before its '{"') would be tokenized differently from the same text in
    training, and the model would not recognise it (what "token healing" works around)."""
    if forced is None:
        return ""
    return TOOL_CALL + ('{"' if not forced else f'{{"name":"{forced}","arguments":{{"')
