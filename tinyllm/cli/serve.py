"""``tinyllm serve``: an OpenAI-compatible HTTP server and a chat page for a run (see
``tinyllm.serve``)."""

from __future__ import annotations

import argparse
import sys

from .common import add_filter_flags


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve a run over HTTP: OpenAI-compatible API and a chat page",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Serve --ckpt at http://HOST:PORT/: GET / is a chat page; "
                                   "/v1/models, /v1/completions and /v1/chat/completions speak "
                                   "OpenAI's API (point the openai client's base_url at "
                                   "http://HOST:PORT/v1); GET /health reports the batch. "
                                   "Concurrent requests share one decode loop (continuous "
                                   "batching).")
    p.add_argument("--ckpt", required=True, help="run directory (or its model.safetensors)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 exposes the server to the network (set --api-key "
                        "then)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 requests")
    p.add_argument("--max-batch", type=int, default=8,
                   help="sequences decoded together (also the largest n)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a batch row; more get 429")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="the most tokens one request may generate "
                         "(default: the model's context)")
    p.add_argument("--model-name", default=None,
                   help="the id clients pass as 'model' (default: the run's folder name)")
    p.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    add_filter_flags(p)
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from ..serve import start
    from ..serve.server import serve_forever
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_batch < 1 or args.max_queue < 0:
        raise ValueError("--max-batch must be >= 1 and --max-queue >= 0")
    blocklist = None
    if args.filter is not None:
        from ..safety.blocklist import load_blocklist
        blocklist = load_blocklist(args.filter)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    server = start(args.ckpt, args.host, args.port, args.api_key, args.max_batch, args.max_queue,
                   args.max_tokens, args.model_name, log, blocklist, args.filter_mode)
    service = server.service
    filtered = f", output filter: {args.filter_mode} {len(blocklist)} terms" if blocklist else ""
    print(f"serving '{service.model_id}' ({service.template.describe()}, context "
          f"{service.limits.context}{filtered}) at {server.url()}/ — API base "
          f"{server.url()}/v1{' (API key required)' if args.api_key else ''}",
          file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print("warning: listening beyond this machine without --api-key: anyone who can reach it "
              "can use it",
              file=sys.stderr)
    serve_forever(server)
    return 0
