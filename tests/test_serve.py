"""`firefly serve`: the official `openai` client against a real server on a loopback port, tiny models.

Oracles: `firefly chat --greedy` run as a real subprocess (the API must answer what the chat
answers), the same request answered alone (for concurrent ones), transformers-free exact text
comparisons, and the worker's own record of each reply (stop reason, reused prompt tokens), which
proves a fast path (KV reuse) or a cancel really happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")

from firefly_tui.server import ApiServer, served_models  # noqa: E402

GREEDY = {"temperature": 0}
USER = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bloom_server(bloom_dir, torch_one_thread):
    models = served_models([str(bloom_dir)], overrides={"device": "cpu", "dtype": "fp32"})
    with ApiServer(models, port=0) as server:
        yield server


@pytest.fixture
def client(bloom_server):
    return openai.OpenAI(base_url=bloom_server.url, api_key="unused", max_retries=0, timeout=120)


def _model(server) -> str:
    return server.models[0].id


def _ask(client, server, messages, **kw):
    r = client.chat.completions.create(model=_model(server), messages=messages, **{**GREEDY, **kw})
    return r.choices[0].message.content, r.choices[0].finish_reason, r.usage


def _ask_streamed(client, server, messages, **kw):
    stream = client.chat.completions.create(
        model=_model(server), messages=messages, stream=True, stream_options={"include_usage": True}, **{**GREEDY, **kw}
    )
    parts, reasons, usage, roles = [], [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert roles == ["assistant"]
    assert len(reasons) == 1
    return "".join(parts), reasons[0], usage


def _raw(server, method, path, body=None, *, headers=None, data=None):
    """(status, parsed JSON) for a request the openai client would refuse to send."""
    if data is None and body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(server.url.removesuffix("/v1") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _firefly_chat_greedy(model_dir, turns, max_new_tokens):
    proc = subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", "--model", str(model_dir), "--dtype", "fp32",
         "--device", "cpu", "--greedy", "--max-new-tokens", str(max_new_tokens)],
        input="".join(t + "\n" for t in turns),
        capture_output=True, text=True, encoding="utf-8", timeout=300,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- answers ------------------------------------------------------------------------------------


def test_models_lists_the_served_model(client, bloom_server, bloom_dir):
    ids = [m.id for m in client.models.list()]
    assert ids == [bloom_dir.name]  # a folder's name as the app shows it, never its local path
    assert client.models.retrieve(ids[0]).id == ids[0]


def test_whole_and_streamed_replies_equal_firefly_chat_greedy(client, bloom_server, bloom_dir):
    turns = ["你好", "Write a poem."]
    served = bloom_server.models[0]
    first, reason1, usage1 = _ask(client, bloom_server, [{"role": "user", "content": turns[0]}], max_tokens=8)
    streamed, sreason1, susage1 = _ask_streamed(client, bloom_server, [{"role": "user", "content": turns[0]}], max_tokens=8)
    assert streamed == first and sreason1 == reason1 and susage1 == usage1
    history = [
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": turns[1]},
    ]
    second, reason2, usage2 = _ask(client, bloom_server, history, max_tokens=8)
    record = served.finished[-1]
    # The second turn reused the first turn's keys/values: only the new message was prefilled.
    assert record.prompt_tokens == usage2.prompt_tokens and record.reused_tokens >= usage1.prompt_tokens
    streamed2, _, _ = _ask_streamed(client, bloom_server, history, max_tokens=8)
    assert streamed2 == second
    assert first != second
    # The oracle: the chat REPL, fed the same two messages, prints the same two replies.
    assert _firefly_chat_greedy(bloom_dir, turns, 8) == f"{first}\n{second}\n"
    assert usage1.completion_tokens == 8 and reason1 == "length"
    assert usage2.total_tokens == usage2.prompt_tokens + usage2.completion_tokens


def test_two_conversations_keep_their_own_caches(client, bloom_server):
    served = bloom_server.models[0]
    a1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "萤火虫是什么？"}]
    b1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rivers."}]
    reply_a, _, usage_a = _ask(client, bloom_server, a1, max_tokens=6)
    _ask(client, bloom_server, b1, max_tokens=6)  # another conversation in between
    a2 = a1 + [{"role": "assistant", "content": reply_a}, {"role": "user", "content": "再说一遍"}]
    _ask(client, bloom_server, a2, max_tokens=6)
    assert served.finished[-1].reused_tokens >= usage_a.prompt_tokens


def test_three_concurrent_requests_all_answer_correctly(client, bloom_server):
    prompts = ["你好", "Write a poem.", "萤火虫"]
    alone = [_ask(client, bloom_server, [{"role": "user", "content": p}], max_tokens=10)[0] for p in prompts]

    def one(i):
        messages = [{"role": "user", "content": prompts[i]}]
        if i == 1:
            return _ask_streamed(client, bloom_server, messages, max_tokens=10)[0]
        return _ask(client, bloom_server, messages, max_tokens=10)[0]

    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(one, range(3)))
    assert together == alone


def test_stop_strings_end_the_reply_before_them(client, bloom_server):
    messages = [{"role": "user", "content": "Write a poem."}]
    full, _, _ = _ask(client, bloom_server, messages, max_tokens=16)
    cut = next(i for i, c in enumerate(full) if i > 0 and c.isprintable() and c != "\ufffd")
    stop = full[cut]
    expected = full[: full.index(stop)]
    text, reason, _ = _ask(client, bloom_server, messages, max_tokens=16, stop=[stop, "never-in-the-reply"])
    assert (text, reason) == (expected, "stop")
    streamed, sreason, _ = _ask_streamed(client, bloom_server, messages, max_tokens=16, stop=stop)
    assert (streamed, sreason) == (expected, "stop")


def test_a_seed_makes_sampled_replies_repeatable(client, bloom_server):
    messages = [{"role": "user", "content": "Write a poem."}]
    kw = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12}
    first = client.chat.completions.create(model=_model(bloom_server), messages=messages, seed=7, **kw)
    again = client.chat.completions.create(model=_model(bloom_server), messages=messages, seed=7, **kw)
    others = {
        client.chat.completions.create(model=_model(bloom_server), messages=messages, seed=s, **kw).choices[0].message.content
        for s in (8, 9, 10)
    }
    assert first.choices[0].message.content == again.choices[0].message.content
    assert others != {first.choices[0].message.content}  # the seed is really used


def test_plain_completions_equal_the_loop_on_the_encoded_prompt(client, bloom_server):
    from firefly_core.generation import ReplyDone, generate_stream
    from firefly_core.models.generation_layers import generation_config_for

    served = bloom_server.models[0]
    prompt = "从前有一只萤火虫"
    r = client.completions.create(model=served.id, prompt=prompt, max_tokens=10, temperature=0)
    stream = client.completions.create(model=served.id, prompt=prompt, max_tokens=10, temperature=0, stream=True)
    streamed = "".join(c.choices[0].text for c in stream if c.choices)
    lm = served.load()
    config = generation_config_for(lm, served.name, overrides={"temperature": 0, "max_new_tokens": 10})
    expected = [e for e in generate_stream(lm, lm.tokenizer.encode(prompt), config) if isinstance(e, ReplyDone)][0]
    assert r.choices[0].text == streamed == expected.text
    assert r.object == "text_completion" and r.usage.completion_tokens == expected.stats.new_tokens


def test_a_client_that_disconnects_mid_stream_frees_the_model(client, bloom_server):
    served = bloom_server.models[0]
    before = len(served.finished)
    stream = client.chat.completions.create(
        model=served.id, messages=[{"role": "user", "content": "hi"}], max_tokens=2000, stream=True, **GREEDY
    )
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 2:
                break
    stream.close()
    records = served.wait_finished(before + 1)
    assert records[before].stop_reason == "cancelled" and records[before].new_tokens < 2000
    text, reason, _ = _ask(client, bloom_server, [{"role": "user", "content": "你好"}], max_tokens=8)
    assert reason == "length" and text
    assert served.finished[-1].stop_reason == "max_new_tokens"


def test_a_queued_request_whose_client_left_is_never_generated(client, bloom_server):
    served = bloom_server.models[0]
    replies, jobs = len(served.finished), served.jobs_done
    stream = client.chat.completions.create(
        model=served.id, messages=[{"role": "user", "content": "hi"}], max_tokens=2000, stream=True, **GREEDY
    )
    next(iter(stream))  # the first request holds the model now
    body = json.dumps({"messages": USER, "max_tokens": 8}).encode()
    waiting = socket.create_connection(("127.0.0.1", bloom_server.port))
    waiting.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert served.wait_until(lambda m: m.queued == 1)
    waiting.close()  # gone while queued
    stream.close()
    assert served.wait_until(lambda m: m.jobs_done == jobs + 2)
    assert [r.stop_reason for r in list(served.finished)[replies:]] == ["cancelled"]  # only the first ran


def test_stopping_the_server_answers_running_and_queued_requests(client, bloom_server):
    served = bloom_server.models[0]
    stream = client.chat.completions.create(
        model=served.id, messages=[{"role": "user", "content": "hi"}], max_tokens=2000, stream=True, **GREEDY
    )
    chunks = iter(stream)
    next(chunks)
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(_raw, bloom_server, "POST", "/v1/chat/completions", {"messages": USER})
        assert served.wait_until(lambda m: m.queued == 1)
        bloom_server.cancel_all()  # what Ctrl-C does first
        status, reply = queued.result(timeout=60)
    assert status == 503 and reply["error"]["code"] == "shutting_down"
    with pytest.raises(openai.APIError, match="stopping"):
        for _ in chunks:
            pass
    assert served.finished[-1].stop_reason == "cancelled"


# -- bad requests ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body, status, param",
    [
        ({}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, 400, "messages"),
        ({"messages": USER, "temperature": "hot"}, 400, "temperature"),
        ({"messages": USER, "temperature": 3}, 400, "temperature"),
        ({"messages": USER, "top_p": 0}, 400, "top_p"),
        ({"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": USER, "max_tokens": 2.5}, 400, "max_tokens"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"messages": USER, "stop": 7}, 400, "stop"),
        ({"messages": USER, "stream": "yes"}, 400, "stream"),
        ({"messages": USER, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
        ({"messages": USER, "presence_penalty": -1}, 400, "presence_penalty"),
        ({"messages": USER, "n": 2}, 400, "n"),
        ({"messages": USER, "seed": 2**70}, 400, "seed"),
        ({"messages": USER, "top_k": -1}, 400, "top_k"),
        ({"messages": USER, "repetition_penalty": 0}, 400, "repetition_penalty"),
        ({"messages": USER, "model": 12}, 400, "model"),
        ({"messages": USER, "model": "gpt-4o"}, 404, "model"),
        ({"messages": [{"role": "user", "content": "萤火虫" * 5000}]}, 400, "messages"),
    ],
)
def test_bad_requests_get_a_4xx_in_openai_shape(bloom_server, body, status, param):
    code, reply = _raw(bloom_server, "POST", "/v1/chat/completions", body)
    assert code == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_prompt_longer_than_the_context_says_so(bloom_server):
    code, reply = _raw(bloom_server, "POST", "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "萤火虫" * 5000}], "stream": True})
    assert code == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert "context window is 2048" in reply["error"]["message"]


def test_malformed_bodies_routes_and_methods_are_answered_in_openai_shape(bloom_server, client):
    cases = [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400),
        ("POST", "/v1/chat/completions", b"", 400),
        ("POST", "/v1/completions", json.dumps({"prompt": 3}).encode(), 400),
        ("POST", "/v1/completions", json.dumps({"prompt": "x", "echo": True}).encode(), 400),
        ("GET", "/v1/chat/completions", None, 405),
        ("GET", "/v1/nothing-here", None, 404),
        ("GET", "/v1/models/no-such-model", None, 404),
    ]
    for method, path, data, status in cases:
        code, reply = _raw(bloom_server, method, path, data=data)
        assert code == status and reply["error"]["message"], (path, data, reply)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError, match="repetition_penalty"):
        client.chat.completions.create(model=_model(bloom_server), messages=USER, frequency_penalty=1.0)
    # ... and the server is still answering.
    assert _ask(client, bloom_server, USER, max_tokens=2)[1] == "length"


def test_a_request_without_a_model_gets_the_default(bloom_server, client):
    code, reply = _raw(bloom_server, "POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 8, **GREEDY})
    assert code == 200 and reply["model"] == _model(bloom_server)
    assert reply["choices"][0]["message"]["content"] == _ask(client, bloom_server, USER, max_tokens=8)[0]


# -- API key, several models, the command ---------------------------------------------------------


def test_api_key_is_required_when_set(bloom_dir, torch_one_thread):
    models = served_models([str(bloom_dir)], overrides={"device": "cpu", "dtype": "fp32"})
    with ApiServer(models, port=0, api_key="sekret") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            code, reply = _raw(server, "GET", "/v1/models", headers=headers)
            assert code == 401 and reply["error"]["code"] == "invalid_api_key"
        wrong = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=_model(server), messages=USER)
        right = openai.OpenAI(base_url=server.url, api_key="sekret", max_retries=0)
        assert [m.id for m in right.models.list()] == [_model(server)]
        r = right.chat.completions.create(model=_model(server), messages=USER, max_tokens=3, **GREEDY)
        assert r.usage.completion_tokens == 3


def test_several_models_each_answer_with_their_own_format(bloom_dir, qwen_dir, torch_one_thread):
    from firefly_core.formats import Message
    from firefly_core.session import ChatSession
    from firefly_core.models.generation_layers import generation_config_for

    models = served_models([str(bloom_dir), str(qwen_dir)], overrides={"device": "cpu", "dtype": "fp32"})
    with ApiServer(models, port=0) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == [bloom_dir.name, qwen_dir.name]
        qwen = server.models[1]
        r = client.chat.completions.create(model=qwen.id, messages=USER, max_tokens=8, **GREEDY)
        assert r.model == qwen.id
        lm = qwen.load()
        assert lm.prompt_format.name == "chat_template"
        config = generation_config_for(lm, qwen.name, overrides={"temperature": 0, "max_new_tokens": 8})
        session = ChatSession(lm, config=config)
        history = [Message("user", "你好")]
        expected = "".join(getattr(e, "text", "") for e in session.reply(history) if type(e).__name__ == "TextDelta")
        assert r.choices[0].message.content == expected
        assert r.usage.prompt_tokens == len(lm.prompt_format.render(lm.tokenizer, history, True).ids)


def test_a_model_that_cannot_load_is_a_clear_error_and_the_server_keeps_serving(bloom_dir, tmp_path, torch_one_thread):
    import shutil

    broken = tmp_path / "no-weights"
    shutil.copytree(bloom_dir, broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    models = served_models([str(bloom_dir), str(broken)], overrides={"device": "cpu", "dtype": "fp32"})
    with ApiServer(models, port=0) as server:
        code, reply = _raw(server, "POST", "/v1/chat/completions", {"model": str(broken.resolve()), "messages": USER})
        assert code == 500 and reply["error"]["type"] == "server_error"
        assert "weights" in reply["error"]["message"] and "Traceback" not in reply["error"]["message"]
        code, reply = _raw(server, "POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 2})
        assert code == 200 and reply["usage"]["completion_tokens"] == 2


def test_serve_command_warns_off_loopback_answers_and_stops_on_ctrl_c(bloom_dir, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "firefly_tui.cli", "serve", "--model", str(bloom_dir), "--host", "0.0.0.0",
         "--port", "0", "--dtype", "fp32", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )
    try:
        lines = []
        while True:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "OpenAI API at" in line:
                break
        assert any("without --api-key" in ln for ln in lines)
        port = int(line.split("OpenAI API at http://")[1].split("/")[0].rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=60) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == bloom_dir.name
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_serve_command_errors_are_clear(bloom_dir, tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "firefly_tui.cli", "serve", *args], capture_output=True,
                              text=True, encoding="utf-8", timeout=120)

    missing = serve("--model", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = serve("--model", str(bloom_dir), "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 1 and "already in use" in busy.stderr and "Traceback" not in busy.stderr


def test_the_system_prompt_saved_for_the_model_is_used_when_a_request_brings_none(bloom_dir, fresh_home, torch_one_thread):
    """`firefly use M --system …`: served requests without a system message get it (open_session
    resolves it, as for `firefly chat` and the app); a request's own system message wins.
    Oracle: prompt length and reply of an in-process ChatSession given the same system prompt."""
    from firefly_core.formats import Message
    from firefly_core.generation import ReplyDone
    from firefly_core.models.user_settings import update_model_settings
    from firefly_core.session import ChatSession, generation_config

    update_model_settings(str(bloom_dir), system="你是一个诗人")
    models = served_models([str(bloom_dir)], overrides={"device": "cpu", "dtype": "fp32", "engine": "torch"})
    with ApiServer(models, port=0) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=120)
        saved = client.chat.completions.create(model=_model(server), messages=USER, max_tokens=6, **GREEDY)
        own = client.chat.completions.create(
            model=_model(server), messages=[{"role": "system", "content": "Answer briefly, in one short line, please."}, *USER], max_tokens=6, **GREEDY
        )
        lm = server.models[0].load()
    config = generation_config(str(bloom_dir), {"temperature": 0, "max_new_tokens": 6}, lm=lm)
    question = [Message("user", "你好")]
    poet, brief = ChatSession(lm, system="你是一个诗人", config=config), ChatSession(lm, system="Answer briefly, in one short line, please.", config=config)
    assert saved.usage.prompt_tokens == len(poet.prompt_ids(question)[1])
    assert saved.choices[0].message.content == [e for e in poet.reply(question) if isinstance(e, ReplyDone)][0].text
    assert own.usage.prompt_tokens == len(brief.prompt_ids(question)[1]) != saved.usage.prompt_tokens
