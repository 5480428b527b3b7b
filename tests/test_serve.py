"""`selfplay serve`: OpenAI-style answers (checked with our own judge client), concurrent requests decoded
together, no dropped connection under a burst, every client mistake a 400 with OpenAI's error body, prompts
measured in tokens against the context, a body cap, and a bearer key."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

MAX_BODY = 64 << 10


@pytest.fixture(scope="module")
def served(tiny_model):
    from selfplay.core.samplers import make_sampler
    from selfplay.evals.serve import make_server

    sampler = make_sampler("hf", str(tiny_model), batch_size=8, device="cpu")
    server = make_server(sampler, "tiny", port=0, max_tokens=8, batch_size=8, max_body_bytes=MAX_BODY).start()
    yield server, sampler, server.url
    server.stop()


def post(url: str, body: object, *, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """(status, parsed JSON body) of a POST; HTTP errors are returned, not raised."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def prompt_tokens(sampler, content: str) -> int:
    from selfplay.core.samplers import encode_prompt, format_prompt

    return len(encode_prompt(sampler.tokenizer, format_prompt(sampler.tokenizer, [{"role": "user", "content": content}])))


def ask(content: str = "What is 2 + 2?", **params: object) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **params}


def test_chat_completions_roundtrip(served):
    from selfplay.judges.http import ChatClient

    server, sampler, base = served
    client = ChatClient(base, "tiny", max_retries=0, timeout=30)
    greedy = [client.chat([{"role": "user", "content": "What is 2 + 2?"}], temperature=0.0, max_tokens=50)
              for _ in range(2)]
    assert greedy[0] == greedy[1] and isinstance(greedy[0], str)
    # max_tokens is capped by the server: 8 tokens at most
    assert len(sampler.tokenizer(greedy[0], add_special_tokens=False)["input_ids"]) <= 8
    status, reply = post(base + "/chat/completions", ask(temperature=0.0))
    assert status == 200 and reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"] == greedy[0]
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    with pytest.raises(urllib.error.HTTPError, match="404") as missing:
        urllib.request.urlopen(base + "/embeddings")
    assert "no route" in json.loads(missing.value.read())["error"]["message"]
    assert json.loads(urllib.request.urlopen(base + "/models").read())["data"][0]["id"] == "tiny"


def test_n_completions_per_request_seeded(served):
    _, _, base = served
    status, reply = post(base + "/chat/completions", ask(n=3, temperature=1.0, seed=7))
    assert status == 200 and [c["index"] for c in reply["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in reply["choices"]]
    assert len(set(texts)) > 1  # three samples, not one answer copied
    assert [c["message"]["content"] for c in post(base + "/chat/completions", ask(n=3, temperature=1.0, seed=7))[1]
            ["choices"]] == texts  # the seed makes them reproducible


def test_concurrent_requests_are_decoded_together_with_the_same_answers(served, monkeypatch):
    import selfplay.evals.serve as serve_mod
    from selfplay.judges.http import ChatClient

    monkeypatch.setattr(serve_mod, "GATHER_S", 0.5)  # all six requests reach the worker's first gather
    server, _, base = served
    client = ChatClient(base, "tiny", max_retries=0, timeout=30)
    questions = [f"What is {i} + {i}?" for i in range(6)]
    alone = [client.chat([{"role": "user", "content": q}], temperature=0.0) for q in questions]
    server.worker.batches.clear()
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda q: client.chat([{"role": "user", "content": q}], temperature=0.0),
                                 questions))
    assert together == alone  # batching changes nothing in the answers
    assert max(server.worker.batches) > 1 and sum(server.worker.batches) == 6


def test_a_burst_of_64_concurrent_requests_is_answered(served):
    """The standard-library server reset 10 of 64 (listen backlog 5); every one must get its answer."""
    _, _, base = served
    bodies = [ask(f"What is {i} + 1?", temperature=0.0, max_tokens=4) for i in range(64)]
    start = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda b: post(base + "/chat/completions", b)[0], bodies))
    assert statuses == [200] * 64
    assert time.perf_counter() - start < 60


# (parameter, request body or raw bytes): each must be a 400 naming the parameter.
INVALID = [
    ("temperature", ask(temperature=-1)),
    ("temperature", ask(temperature=2.5)),
    ("temperature", ask(temperature="0.5")),
    ("top_p", ask(top_p=2)),
    ("top_p", ask(top_p=0)),
    ("max_tokens", ask(max_tokens=0)),
    ("max_tokens", ask(max_tokens=1.5)),
    ("max_completion_tokens", ask(max_completion_tokens=-3)),
    ("n", ask(n=0)),
    ("n", ask(n=100)),
    ("n", ask(n=True)),
    ("seed", ask(seed="x")),
    ("stop", ask(stop=[1])),
    ("stop", ask(stop=["a", "b", "c", "d", "e"])),
    ("stream", ask(stream=True)),
    ("frequency_penalty", ask(frequency_penalty=0.5)),
    ("logit_bias", ask(logit_bias={"1": 5})),
    ("messages", {"model": "tiny"}),
    ("messages", {"messages": []}),
    ("messages", {"messages": "hi"}),
    ("messages[0].role", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("messages[0].content", {"messages": [{"role": "user", "content": 5}]}),
    ("messages[0].content", {"messages": [{"role": "user"}]}),
    (None, b"{not json"),
    (None, b"[1, 2]"),
]


def test_every_invalid_parameter_is_a_400_with_openai_error_body(served):
    server, _, base = served
    server.worker.batches.clear()
    for param, body in INVALID:
        status, reply = post(base + "/chat/completions", body)
        error = reply["error"]
        assert status == 400, (param, body, reply)
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], (body, error)
        assert set(error) == {"message", "type", "param", "code"}
    assert server.worker.batches == []  # none of them reached the model


def test_prompts_beyond_the_context_and_oversized_bodies_are_refused_before_decoding(served):
    server, sampler, base = served
    server.worker.batches.clear()
    # ~4,000 tokens against a context of 1,024: refused after counting tokens, before any allocation
    status, reply = post(base + "/chat/completions", ask("1 2 " * 2000))
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in reply["error"]["message"]
    # a prompt that fits, with an explicit completion one token too long; then one that fits exactly
    content = next(c for c in ("1 " * k for k in range(1100, 0, -1)) if prompt_tokens(sampler, c) < 1024)
    room = 1024 - prompt_tokens(sampler, content)
    assert 1 <= room <= 8
    status, reply = post(base + "/chat/completions", ask(content, max_tokens=room + 1))
    assert status == 400 and f"{room + 1} in the completion" in reply["error"]["message"]
    assert server.worker.batches == []
    status, reply = post(base + "/chat/completions", ask(content, max_tokens=room, temperature=0.0))
    assert status == 200 and reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"] <= 1024
    # a body over the cap: refused from its Content-Length, and when sent chunked without one
    for size in (MAX_BODY + 1, 16 * MAX_BODY):  # just over; far over (the client still gets its 413)
        status, reply = post(base + "/chat/completions", ask("x" * size))
        assert status == 413 and reply["error"]["code"] == "request_too_large"
    host, port = base.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (json.dumps(ask("y" * 1000)).encode() for _ in range(MAX_BODY // 1000 + 2))
    conn.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    conn.close()


def test_bearer_key_required_when_set_and_beyond_loopback(tiny_model, monkeypatch):
    from selfplay.core.samplers import make_sampler
    from selfplay.errors import UserError
    from selfplay.evals.serve import make_server
    from selfplay.judges.http import ChatClient

    sampler = make_sampler("hf", str(tiny_model), batch_size=2, device="cpu")
    with pytest.raises(UserError, match="SELFPLAY_API_KEY"):
        make_server(sampler, "tiny", host="0.0.0.0", port=0)
    key = "sk-test-5f1c2a"
    server = make_server(sampler, "tiny", port=0, max_tokens=4, api_key=key).start()
    try:
        url = server.url + "/chat/completions"
        missing = post(url, ask())
        wrong = post(url, ask(), headers={"Authorization": "Bearer sk-test-5f1c2b"})
        assert missing[0] == wrong[0] == 401 and wrong[1]["error"]["code"] == "invalid_api_key"
        assert key not in json.dumps([missing, wrong])
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(server.url + "/models")
        monkeypatch.setenv("SERVE_TEST_KEY", key)
        assert isinstance(ChatClient(server.url, api_key_env="SERVE_TEST_KEY", max_retries=0).chat(
            [{"role": "user", "content": "hi"}]), str)
    finally:
        server.stop()


def test_cli_checks_its_arguments_before_loading_a_model(cli, monkeypatch):
    monkeypatch.delenv("SELFPLAY_API_KEY", raising=False)
    cases = [
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--host", "0.0.0.0"], "SELFPLAY_API_KEY"),
        (["--context-length", "1"], "--context-length"),
        (["--backend", "tgi"], "unknown serve backend"),
    ]
    for args, message in cases:  # the model does not exist: a check that came after loading would say so
        result = cli(["serve", "--model", "/nonexistent/model", *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)


def test_vllm_backend_starts_vllms_own_server(monkeypatch, tiny_model):
    import importlib.util
    import subprocess

    from selfplay.evals import serve as serve_mod

    command = serve_mod.vllm_command(str(tiny_model), "tiny", host="127.0.0.1", port=8001, context=512)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--max-model-len" in command
    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    serve_mod.serve(str(tiny_model), port=8001, backend="vllm", api_key="sk-x")
    (cmd, env), = calls
    assert env["VLLM_API_KEY"] == "sk-x" and "sk-x" not in cmd  # the key stays off the command line
