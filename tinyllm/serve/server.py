"""The HTTP side: Python's ``http.server``, one thread per connection, all of them feeding one
``Engine``.

    GET  /                      the chat page (static/chat.html)
    GET  /health                {"status": "ok", "running": rows in the batch, "waiting": queued requests, ...}
    GET  /v1/models             the model, its context length and how chat messages become its prompt
    POST /v1/completions        OpenAI completions (``stream: true`` for server-sent events)
    POST /v1/chat/completions   OpenAI chat completions, with tools

Safety, because a server is an open door: it binds 127.0.0.1 unless told otherwise; with an API key,
every /v1 request must send ``Authorization: Bearer KEY``, compared in constant time
(``hmac.compare_digest``, so the response time does not reveal how many leading characters were
right); bodies over ``max_body`` bytes are refused before they are read; each socket read times out;
max_tokens, n and the queue are bounded (see ``api.Limits`` and ``Engine``); and a streaming client
that disconnects is noticed between tokens and its rows leave the batch before the next step.
"""

from __future__ import annotations

import hmac
import itertools
import json
import select
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from .api import APIError
from .responses import completion_response, sse, stream_chunk, usage_chunk

PAGE = "chat.html"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                               "script-src 'unsafe-inline'; img-src 'self' data:"}


class Server(ThreadingHTTPServer):
    """An HTTP server for a ``Service``. ``port=0`` picks a free port (``server.port`` tells
    which)."""
    daemon_threads = True
    # the listen backlog: with the default 5, a burst of clients waits for SYN retries
    request_queue_size = 128

    def __init__(self, service, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None,
                 max_body: int = 1 << 20, timeout: float = 30.0, log=None):
        self.service, self.api_key, self.max_body, self.log = service, api_key, max_body, log
        handler = type("Handler", (Handler,), {"timeout": timeout})
        super().__init__((host, port), handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format, *args):
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    # ------------------------------------------------------------------------------------- routing

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method: str) -> None:
        routes = {"/": ("GET", self._page), "/health": ("GET", self._health),
                  "/v1/models": ("GET", self._models),
                  "/v1/completions": ("POST", self._completions),
                  "/v1/chat/completions": ("POST", self._chat)}
        path = self.path.split("?", 1)[0]
        try:
            if path not in routes:
                raise APIError(404, f"no such endpoint: {method} {path}", code="not_found")
            wanted, action = routes[path]
            if method != wanted:
                raise APIError(405, f"{path} takes {wanted}, not {method}",
                               code="method_not_allowed")
            if path.startswith("/v1/"):
                self._check_key()
            action()
        except APIError as e:
            self._send_json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _check_key(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        given = given[len("Bearer "):] if given.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise APIError(411, "send the JSON body with a Content-Length header",
                           code="length_required")
        if int(length) > self.server.max_body:
            self.close_connection = True            # the body is left unread
            raise APIError(413, f"the request body has {length} bytes; this server takes at most "
                                f"{self.server.max_body}", code="request_too_large")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}",
                           code="invalid_json") from None

    # ----------------------------------------------------------------------------------- endpoints

    def _page(self):
        page = resources.files(__package__).joinpath("static", PAGE).read_bytes()
        self._send(200, page, "text/html; charset=utf-8")

    def _health(self):
        self._send_json(200, self.server.service.health())

    def _models(self):
        self._send_json(200, self.server.service.models())

    def _completions(self):
        self._run(self.server.service.prepare_completion(self._read_json()))

    def _chat(self):
        self._run(self.server.service.prepare_chat(self._read_json()))

    def _run(self, job) -> None:
        service = self.server.service
        if job.stream:
            self._stream(job)
            return
        for _ in service.run_job(job, self._client_gone):
            pass
        if any(c.finish_reason is None for c in job.choices):      # the client left before the end
            self.close_connection = True
            return
        self._send_json(200, completion_response(job, service.tokenizer, service.usage(job)))

    def _stream(self, job) -> None:
        """Server-sent events: each choice's first chunk, text as it is released, its last chunk
        with the finish reason; then the usage and [DONE]."""
        # sent: logprob entries per choice
        service, started, sent = self.server.service, set(), {}
        events = service.run_job(job, self._client_gone)
        # errors before the first token are JSON
        first = next(events, None)
        if first is None:                                          # the client left while queued
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for index, text in itertools.chain([first], events):
                if index not in started and job.kind == "chat":
                    started.add(index)
                    self.wfile.write(sse(stream_chunk(job, index, first=True)))
                choice = job.choices[index]
                new_logprobs, sent[index] = choice.logprobs[sent.get(index,
                                                                     0):], len(choice.logprobs)
                chunk = (stream_chunk(job, index, text=text, logprobs=new_logprobs,
                                      tokenizer=service.tokenizer)
                         if text is not None else
                         stream_chunk(job, index, finish_reason=choice.finish_reason,
                                      tool_calls=choice.tool_calls))
                self.wfile.write(sse(chunk))
                self.wfile.flush()
            if job.include_usage:
                self.wfile.write(sse(usage_chunk(job, service.usage(job))))
            self.wfile.write(sse("[DONE]"))
            self.wfile.flush()
        except APIError as e:                                      # after the headers: as an event
            self.wfile.write(sse(e.body()))
        except (BrokenPipeError, ConnectionResetError):
            job.request.cancel()
        finally:
            events.close()

    def _client_gone(self) -> bool:
        """True when the client has closed its end (readable, and a peek reads nothing)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -------------------------------------------------------------------------------------- sending

    def _send_json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


def serve_forever(server: Server) -> None:
    """Run until Ctrl-C, then stop the engine."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
    finally:
        server.server_close()
        server.service.close()
