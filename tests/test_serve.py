"""The server end to end, on an ephemeral localhost port, with a tiny model that memorised a tool call.

The official ``openai`` client talks to it (skipped when not installed); raw sockets check the error JSON,
the limits and a client that disconnects mid-stream."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from tinyllm.checkpoint import save_model
from tinyllm.cli import main
from tinyllm.generate import generate
from tinyllm.model import GPT, GPTConfig
from tinyllm.serve import start
from tinyllm.serve.chat import ChatTemplate, format_tool_call, format_tool_result
from tinyllm.serve.server import Server
from tinyllm.serve.tools import CALCULATOR, run_tool
from tinyllm.tokenizer import BPETokenizer

QUESTION = "What is 12+30?"
CALL = format_tool_call("calculator", {"expression": "12+30"})
REPLY_TEXT = "The answer is 42."
END = "<|endoftext|>"


@pytest.fixture(scope="module")
def run(tmp_path_factory, memorise):
    template = ChatTemplate(None)                                 # a base run: plain concatenation
    with_tools = template.render([{"role": "user", "content": QUESTION}], ["calculator"])
    after_result = with_tools + CALL + format_tool_result("42")
    texts = [with_tools + CALL + END, after_result + REPLY_TEXT + END, "Hello there. General Kenobi!" + END]
    tokenizer = BPETokenizer.train("".join(texts) * 5, 320, special_tokens=(END,))
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=32)
    model = memorise(GPT(config, seed=0), [tokenizer.encode(t, allowed_special="all") for t in texts])
    root = tmp_path_factory.mktemp("serve") / "tiny"
    save_model(root, model, tokenizer)
    return root


@pytest.fixture(scope="module")
def server(run):
    server = start(run, port=0, max_batch=4, max_queue=32)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
    server.service.close()


def _post(server, path, body, headers=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(server.url() + path, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url() + "/v1", api_key="unused", max_retries=0)


def test_openai_client_lists_the_model_and_completes(server):
    client = _client(server)
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    completion = client.completions.create(model="tiny", prompt="Hello there.", max_tokens=6, temperature=0)
    assert completion.choices[0].text.startswith(" General")
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens == 6


def test_openai_chat_with_and_without_stream_give_the_same_greedy_reply(server):
    client = _client(server)
    messages = [{"role": "user", "content": "Hello there."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == streamed and whole.usage.completion_tokens > 0
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


@pytest.mark.parametrize("stream, choice", [(False, "auto"), (True, "auto"), (False, "required"),
                                           (True, {"type": "function", "function": {"name": "calculator"}})])
def test_openai_client_tool_call_then_the_answer_from_its_result(server, stream, choice):
    client = _client(server)
    messages = [{"role": "user", "content": QUESTION}]
    response = client.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR], temperature=0,
                                              stream=stream, tool_choice=choice)
    if stream:
        parts = [c.choices[0] for c in response if c.choices]
        calls = [d for p in parts for d in (p.delta.tool_calls or [])]
        name, arguments, finish = calls[0].function.name, calls[0].function.arguments, parts[-1].finish_reason
        call_id = calls[0].id
    else:
        call = response.choices[0].message.tool_calls[0]
        name, arguments, finish, call_id = call.function.name, call.function.arguments, response.choices[0].finish_reason, call.id
    assert (name, json.loads(arguments), finish) == ("calculator", {"expression": "12+30"}, "tool_calls")
    result = run_tool(name, arguments)
    assert result == "42"
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": result}]
    answer = client.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR], temperature=0)
    assert answer.choices[0].message.content == REPLY_TEXT and answer.choices[0].finish_reason == "stop"


def test_greedy_output_equals_tinyllm_generate(server, run, capsys):
    prompt = "Hello"
    assert main(["generate", "--ckpt", str(run), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "10"]) == 0
    printed = capsys.readouterr().out
    status, body = _post(server, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 10,
                                                     "temperature": 0, "seed": 5})
    assert status == 200 and printed == prompt + body["choices"][0]["text"] + "\n"


def test_sixteen_concurrent_streaming_clients_get_their_own_tokens(server):
    service = server.service
    prompts = [f"{word} there." for word in ("Hello", "What", "The", "General")] * 4
    lengths = [3 + i % 7 for i in range(16)]
    expected = [generate(service.model, service.tokenizer.encode(p, allowed_special="all"), n, temperature=0,
                         stop_ids=service.stop_ids) for p, n in zip(prompts, lengths)]
    results = [None] * 16

    def client(i):
        body = {"model": "tiny", "prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0, "stream": True}
        request = urllib.request.Request(server.url() + "/v1/completions", json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        results[i] = (text, chunks[-1]["usage"]["completion_tokens"], events[-1])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (text, count, last), tokens, n in zip(results, expected, lengths):
        assert last == "[DONE]"
        assert text == service.tokenizer.decode(tokens)
        assert count == (len(tokens) if len(tokens) == n else len(tokens) + 1)   # an end token counts too


CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there."}], "max_tokens": 3}


@pytest.mark.parametrize("body, raw, status, param", [
    (None, b"{not json", 400, None),
    ({"model": "tiny", "max_tokens": 3}, None, 400, "messages"),
    ({**GOOD, "max_tokens": "3"}, None, 400, "max_tokens"),
    ({**GOOD, "messages": "hi"}, None, 400, "messages"),
    ({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, None, 400, "messages[0]"),
    ({**GOOD, "model": "gpt-4"}, None, 404, "model"),
    ({**GOOD, "max_tokens": 97}, None, 400, "max_tokens"),
    ({**GOOD, "temperature": -0.5}, None, 400, "temperature"),
    ({**GOOD, "n": 99}, None, 400, "n"),
    ({**GOOD, "top_p": 0}, None, 400, "top_p"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, None, 400, "stop"),
    ({**GOOD, "temprature": 0.5}, None, 400, "temprature"),
    ({**GOOD, "presence_penalty": 1.5}, None, 400, "presence_penalty"),
    ({**GOOD, "tool_choice": "required"}, None, 400, "tool_choice"),
    ({**GOOD, "messages": [{"role": "user", "content": "x " * 200}]}, None, 400, "messages"),
])
def test_bad_input_gets_openai_error_json_and_the_server_keeps_serving(server, body, raw, status, param):
    got, reply = _post(server, CHAT, body, raw=raw)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    assert _post(server, CHAT, GOOD)[0] == 200


def _raw_request(server, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection((server.server_address[0], server.port), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_oversized_body_wrong_method_unknown_path_and_missing_length(server):
    huge = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    reply = _raw_request(server, huge, b"{" * 1000)
    assert reply.startswith(b"HTTP/1.1 413") and b'"request_too_large"' in reply
    reply = _raw_request(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url() + "/v1/chat/completions")
    assert e.value.code == 405 and json.loads(e.value.read())["error"]["code"] == "method_not_allowed"
    assert _post(server, "/v2/nothing", {})[0] == 404
    assert _post(server, CHAT, GOOD)[0] == 200


def test_api_key_is_required_when_set(server):
    keyed = Server(server.service, port=0, api_key="s3cret")           # a second front door, same engine
    threading.Thread(target=keyed.serve_forever, daemon=True).start()
    try:
        assert _post(keyed, CHAT, GOOD)[0] == 401
        status, reply = _post(keyed, CHAT, GOOD, {"Authorization": "Bearer s3cre"})
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        assert _post(keyed, CHAT, GOOD, {"Authorization": "Bearer s3cret"})[0] == 200
        with urllib.request.urlopen(keyed.url() + "/health") as response:      # health needs no key
            assert json.loads(response.read())["status"] == "ok"
    finally:
        keyed.shutdown()
        keyed.server_close()


class _Slow:
    """The model, 30 ms slower per step: long enough to disconnect in the middle of a stream."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def next_token_logits(self, *args):
        time.sleep(0.03)
        return self.model.next_token_logits(*args)


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    engine = server.service.engine
    engine.model = _Slow(engine.model)
    try:
        body = json.dumps({**GOOD, "max_tokens": 60, "stream": True, "messages": [{"role": "user", "content": "a"}]})
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        s = socket.create_connection((server.server_address[0], server.port), timeout=10)
        s.sendall(head + body.encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        steps_at_close = engine.steps
        s.close()
        deadline = time.time() + 5
        while engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats()["running"] == 0
        assert engine.steps - steps_at_close < 10                        # not the 60 it asked for
    finally:
        engine.model = engine.model.model
    assert _post(server, CHAT, GOOD)[0] == 200


def test_tinyllm_chat_runs_the_calculator_for_a_run_that_uses_tools(run, tmp_path, monkeypatch, capsys):
    import io

    from tinyllm.checkpoint import load_pretrained
    model, tokenizer = load_pretrained(run)
    save_model(tmp_path / "tools", model, tokenizer, extra_config={"tools": ["calculator"]})
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION + "\n"))
    assert main(["chat", "--ckpt", str(tmp_path / "tools"), "--temperature", "0", "--max-new-tokens", "60"]) == 0
    out = capsys.readouterr().out
    assert out == CALL[:-len("</tool_call>")] + "</tool_call> → 42\n" + REPLY_TEXT + "\n"


def _browser():
    """A headless Chromium driven by playwright, or a skip naming what is missing."""
    import shutil
    sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs playwright (pip install playwright)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("the page test needs a Chromium binary (apt-get install chromium)")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return sync_api.sync_playwright(), path, args


def test_the_chat_page_streams_a_reply_and_shows_a_tool_call_in_a_real_browser(server, tmp_path):
    manager, path, args = _browser()
    with manager as p:
        browser = p.chromium.launch(executable_path=path, args=args)
        # The page's Content-Security-Policy forbids eval, which playwright's wait_for_function uses.
        page = browser.new_page(viewport={"width": 1100, "height": 700}, bypass_csp=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url() + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('tiny')")
        assert page.evaluate("calculate('2*(3+4)') + '|' + calculate('7/2')") == "14|3.5"
        page.eval_on_selector("#temperature", "e => { e.value = 0; e.dispatchEvent(new Event('input')); }")
        page.check("#use-tools")
        # Count the updates of assistant bubbles: a streamed reply arrives in several pieces.
        page.evaluate("""window.seen = new Set(); new MutationObserver(() => {
            const bubbles = document.querySelectorAll('.msg.assistant');
            if (bubbles.length) window.seen.add(bubbles[bubbles.length - 1].textContent);
          }).observe(document.getElementById('thread'), {subtree: true, childList: true, characterData: true})""")
        engine = server.service.engine
        engine.model = _Slow(engine.model)                               # tokens 30 ms apart, as from a bigger model
        try:
            page.fill("#input", QUESTION)
            page.press("#input", "Enter")
            page.wait_for_selector(".tool", timeout=20000)
            assert page.inner_text(".tool .result") == "42" and "calculator(12+30)" in page.inner_text(".tool")
            page.wait_for_function(f"[...document.querySelectorAll('.msg.assistant')].some("
                                   f"m => m.textContent === {json.dumps(REPLY_TEXT)})", timeout=20000)
        finally:
            engine.model = engine.model.model
        page.uncheck("#use-tools")
        page.fill("#input", "Hello there.")
        page.press("#input", "Enter")
        page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2 && !document.querySelector('.streaming')",
                               timeout=20000)
        # The answer was seen growing: several different prefixes of it, not just the whole.
        prefixes = page.evaluate("[...window.seen]")
        assert sum(1 for text in prefixes if text and REPLY_TEXT.startswith(text)) >= 3 and not errors
        page.screenshot(path=str(_screenshot_path(tmp_path)))
        _stop_button_frees_the_row(page, server.service.engine)
        browser.close()


def _stop_button_frees_the_row(page, engine):
    engine.model = _Slow(engine.model)
    try:
        page.click("#new-chat")                                          # (the context holds 96 tokens)
        page.check("#use-tools")
        page.fill("#input", QUESTION)                                   # a tool call: ~30 slow tokens
        page.press("#input", "Enter")
        deadline = time.time() + 10
        while not engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.01)
        page.click("#stop")
        page.wait_for_selector("text=stopped", timeout=5000)
        deadline = time.time() + 5
        while engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats()["running"] == 0 and page.is_visible("#send")
    finally:
        engine.model = engine.model.model


def _screenshot_path(tmp_path):
    from pathlib import Path
    screens = Path("/work/screens")
    return screens / "serve_chat_page.png" if screens.is_dir() else tmp_path / "serve_chat_page.png"


def test_stop_strings_n_seed_and_logprobs(server):
    client = _client(server)
    whole = client.completions.create(model="tiny", prompt="Hello there.", max_tokens=12, temperature=0)
    stop = whole.choices[0].text[5:8]
    cut = whole.choices[0].text[:whole.choices[0].text.index(stop)]
    stopped = client.completions.create(model="tiny", prompt="Hello there.", max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], n=3, seed=11,
                                              max_tokens=8, temperature=1.0, logprobs=True, top_logprobs=2)
               for _ in range(2)]
    texts = [[c.message.content for c in s.choices] for s in sampled]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1                # seeded, and row i uses seed + i
    entry = sampled[0].choices[0].logprobs.content[0]
    assert entry.logprob <= 0 and len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.logprob
    chunks = list(client.completions.create(model="tiny", prompt="Hi", n=2, seed=3, max_tokens=5, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1} and chunks[-1].usage.completion_tokens <= 10
    settings = dict(model="tiny", prompt="Hello there.", max_tokens=6, temperature=0, logprobs=2)
    whole = client.completions.create(**settings).choices[0].logprobs
    parts = [c.choices[0].logprobs for c in client.completions.create(**settings, stream=True) if c.choices]
    assert [t for p in parts if p for t in p.tokens] == whole.tokens and len(whole.tokens) == 6
    assert [x for p in parts if p for x in p.token_logprobs] == whole.token_logprobs


class _Broken(_Slow):
    def next_token_logits(self, *args):
        raise FloatingPointError("the model broke")


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_model_step_is_a_500_and_the_server_recovers(server, stream):
    engine = server.service.engine
    engine.model = _Broken(engine.model)
    try:
        if stream:
            body = json.dumps({**GOOD, "stream": True}).encode()
            request = urllib.request.Request(server.url() + CHAT, body)
            with pytest.raises(urllib.error.HTTPError) as e:      # it failed before the first token: plain JSON
                urllib.request.urlopen(request, timeout=30)
            status, reply = e.value.code, json.loads(e.value.read())
        else:
            status, reply = _post(server, CHAT, GOOD)
        assert status == 500 and reply["error"]["type"] == "server_error" and "the model broke" in reply["error"]["message"]
    finally:
        engine.model = engine.model.model
    assert _post(server, CHAT, GOOD)[0] == 200


def test_tinyllm_serve_command_starts_on_localhost_and_checks_its_flags(run, capsys):
    import re
    import subprocess
    import sys
    from pathlib import Path
    assert main(["serve", "--ckpt", str(run), "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err
    root = Path(__file__).parents[1]
    process = subprocess.Popen([sys.executable, "-m", "tinyllm", "serve", "--ckpt", str(run), "--port", "0", "--quiet"],
                               cwd=root, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", line).group(1)       # localhost unless told otherwise
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        with urllib.request.urlopen(url + "/", timeout=30) as response:
            page = response.read().decode()
            assert "<title>tinyllm chat</title>" in page
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)      # nothing from a CDN
    finally:
        process.terminate()
        process.wait(timeout=30)
