"""Serving: an OpenAI-compatible HTTP server with continuous batching, a chat page, and tool calls.

    engine.py     the decode loop: one batched KV cache, requests join and leave between steps
    api.py        the request format, checked field by field, and OpenAI's error JSON
    chat.py       chat messages → prompt text (the run's template), tool-call markup, streamed text
    service.py    a request's life: check, tokenize, run on the engine, collect choices
    responses.py  OpenAI's response and stream-chunk shapes
    server.py     the HTTP side (standard library only) and its safety limits
    tools.py      the calculator tool: arithmetic parsed with ``ast`` and a whitelist, never ``eval``
    static/       the chat page, one self-contained HTML file

``tinyllm serve --ckpt RUN`` starts it; ``tinyllm.serve.start(run_dir)`` does the same from Python.
"""

from __future__ import annotations


def start(run_dir, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 8,
          max_queue: int = 64, max_tokens: int | None = None, model_id: str | None = None, log=None,
          blocklist=None, filter_mode: str = "mask"):
    """Load a run and return a started ``Server`` (call ``serve_forever()``, or run it in a thread).
    ``blocklist``: a ``tinyllm.safety.blocklist.Blocklist`` every reply is filtered with
    (``filter_mode`` "mask" or "block")."""
    from pathlib import Path

    from ..checkpoint import load_config, load_pretrained
    from .server import Server
    from .service import Service
    model, tokenizer = load_pretrained(run_dir)
    if tokenizer is None:
        raise FileNotFoundError(f"the run '{run_dir}' has no tokenizer file; serving text needs "
                                "one")
    path = Path(run_dir)
    name = model_id or (path.parent.name if path.suffix == ".safetensors" else path.name)
    service = Service(model.eval(), tokenizer, load_config(run_dir), name, max_batch, max_queue,
                      max_tokens, blocklist, filter_mode)
    # binds (or fails) before the engine starts
    server = Server(service, host, port, api_key, log=log)
    service.start()
    return server
