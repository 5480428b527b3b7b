"""The OpenAI-compatible client and the pairwise LLM judge against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import re

import pytest
from chat_server import Reply, completion

from selfplay.errors import UserError
from selfplay.judges.http import ChatClient, JudgeError, MalformedReplyError
from selfplay.judges.llm_judge import LLMJudge, combine_orders, parse_verdict

SECRET = "sk-test-SECRET-0123456789"

@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, chat_server):
    """start(script(number, body) -> (status, raw body, delay)) with the test key in the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return chat_server


def fast_client(url: str, **kw) -> ChatClient:
    return ChatClient(url, "judge-model", timeout=kw.pop("timeout", 5.0), backoff=0.01, **kw)


def test_chat_sends_key_as_bearer_and_returns_content(serve) -> None:
    server = serve(lambda n, body: (200, completion("hello"), 0.0))
    client = fast_client(server.url)
    assert client.chat([{"role": "user", "content": "hi"}], max_tokens=7) == "hello"
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["authorization"] == f"Bearer {SECRET}"
    assert req["body"]["model"] == "judge-model" and req["body"]["max_tokens"] == 7
    assert SECRET not in repr(client)


def test_retries_a_500_then_succeeds(serve, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(lambda n, body: (500, "boom", 0.0) if n == 0 else (200, completion("ok"), 0.0))
    with caplog.at_level(logging.WARNING):
        assert fast_client(server.url).chat([{"role": "user", "content": "x"}]) == "ok"
    assert len(server.requests) == 2
    assert "HTTP 500" in caplog.text and SECRET not in caplog.text


def test_retries_a_timeout(serve, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(lambda n, body: (200, completion("late"), 1.0) if n == 0 else (200, completion("ok"), 0.0))
    with caplog.at_level(logging.WARNING):
        assert fast_client(server.url, timeout=0.2).chat([{"role": "user", "content": "x"}]) == "ok"
    assert len(server.requests) == 2
    assert "timed out" in caplog.text


def test_gives_up_after_max_retries_without_leaking_the_key(serve, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(lambda n, body: (503, f"overloaded, your key {SECRET}", 0.0))
    with caplog.at_level(logging.WARNING), pytest.raises(JudgeError) as err:
        fast_client(server.url, max_retries=2).chat([{"role": "user", "content": "x"}])
    assert len(server.requests) == 3
    assert isinstance(err.value, UserError) and "gave up after 3 tries" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_client_error_is_not_retried(serve) -> None:
    server = serve(lambda n, body: (401, f"bad key {SECRET}", 0.0))
    with pytest.raises(JudgeError) as err:
        fast_client(server.url).chat([{"role": "user", "content": "x"}])
    assert len(server.requests) == 1
    assert "401" in str(err.value) and SECRET not in str(err.value)


@pytest.mark.parametrize("body", ["<html>not json</html>", '{"choices": []}', '{"unexpected": true}'])
def test_non_completion_body_is_retried_then_a_malformed_reply_naming_the_record(serve, body: str) -> None:
    server = serve(lambda n, _: (200, body, 0.0))
    with pytest.raises(MalformedReplyError, match="prompt 'q7'.*not a chat completion.*gave up after 3 tries"):
        fast_client(server.url, max_retries=2).chat([{"role": "user", "content": "x"}], label="prompt 'q7'")
    assert len(server.requests) == 3


def test_a_reply_without_text_is_empty_not_an_error(serve) -> None:
    server = serve(lambda n, _: (200, '{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}}]}', 0.0))
    assert fast_client(server.url).chat([{"role": "user", "content": "x"}]) == ""


def test_in_flight_requests_share_one_backoff(serve, caplog: pytest.LogCaptureFixture) -> None:
    """16 requests in flight hit 32 failures: one "retrying" line per round of the shared backoff, not one per
    failed request (which would print 32). Two rounds on an idle machine; on a loaded one a failure that
    arrives after its round's sleep opens another round (4 were seen with load average 13)."""
    from selfplay.judges.http import ChatRequest

    server = serve(lambda n, body: Reply(503, "{}", headers={}) if n < 32 else
                   Reply(200, completion(body["messages"][0]["content"])))
    client = ChatClient(server.url, "judge-model", timeout=5.0, backoff=0.3, concurrency=16)
    with caplog.at_level(logging.WARNING):
        replies = client.chat_many([ChatRequest([{"role": "user", "content": f"m{i}"}], f"r{i}") for i in range(16)])
    assert replies == [f"m{i}" for i in range(16)]
    assert caplog.text.count("retrying in") == client.backoff.rounds_logged
    assert 2 <= client.backoff.rounds_logged <= 6
    assert len(server.requests) == 48


def test_retry_after_is_honoured_beyond_the_backoff(serve) -> None:
    import time

    server = serve(lambda n, body: Reply(429, "{}", headers={"Retry-After": "1"}) if n == 0 else
                   Reply(200, completion("ok")))
    started = time.monotonic()
    assert fast_client(server.url).chat([{"role": "user", "content": "x"}]) == "ok"
    gap = server.requests[1]["time"] - server.requests[0]["time"]
    assert 1.0 <= gap < 3.0 and time.monotonic() - started >= 1.0  # backoff alone would be 0.01 s


def test_unreachable_server_raises_after_retries() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError, match="connection failed"):
        fast_client(f"http://127.0.0.1:{port}/v1", max_retries=1).chat([{"role": "user", "content": "x"}])


def test_verdict_parsing_and_order_combination() -> None:
    assert parse_verdict("A is better. [[A]]") == "A"
    assert parse_verdict("I first thought [[A]] but final verdict: [[C]]") == "C"
    assert parse_verdict("no verdict") is None
    assert combine_orders("A", "B") == 1.0  # i wins in both orders
    assert combine_orders("B", "A") == 0.0
    assert combine_orders("C", "C") == 0.5
    assert combine_orders("A", "A") == 0.5  # position bias: inconsistent -> tie
    assert combine_orders("A", "C") == 0.5
    assert combine_orders(None, "B") == 0.5


ANSWER = re.compile(r"Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End", re.S)


def quality_judge(n: int, body: dict) -> tuple[int, str, float]:
    """Prefers the answer with the larger number; answers with 'garble' get a verdict-less reply."""
    answers = dict(ANSWER.findall(body["messages"][-1]["content"]))
    if "garble" in answers["A"] + answers["B"]:
        return 200, completion("I cannot decide."), 0.0
    qa, qb = (int(re.search(r"\d+", answers[x]).group()) for x in "AB")
    verdict = "[[A]]" if qa > qb else "[[B]]" if qb > qa else "[[C]]"
    return 200, completion(f"Comparison done. {verdict}"), 0.0


def test_llm_judge_builds_a_consistent_win_matrix(serve) -> None:
    server = serve(quality_judge)
    judge = LLMJudge(server.url, "m", concurrency=3, client=fast_client(server.url))
    items = [
        {"id": "a", "prompt_messages": [{"role": "user", "content": "q1"}], "samples": ["n 3", "n 1", "n 2"]},
        {"id": "b", "prompt_messages": [{"role": "user", "content": "q2"}], "samples": ["n 5", "n 5"]},
        {"id": "c", "prompt_messages": [{"role": "user", "content": "q3"}], "samples": ["n 1", "garble", "n 2"],
         "reference": "n 9"},
    ]
    a, b, c = judge.score(items)
    assert len(server.requests) == 3 * 2 + 2 * 1 + 3 * 2  # K(K-1) calls per prompt
    assert a["win_matrix"] == [[0.5, 1.0, 1.0], [0.0, 0.5, 0.0], [0.0, 1.0, 0.5]] and a["errors"] == 0
    assert b["win_matrix"] == [[0.5, 0.5], [0.5, 0.5]]
    # both orders of the two pairs involving "garble" have no verdict: 4 errors, ties, not fatal
    assert c["errors"] == 4 and c["pairs_usable"] == 1 and a["pairs_usable"] == 3
    assert c["win_matrix"] == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.5], [1.0, 0.5, 0.5]]
    for result in (a, b, c):
        m = result["win_matrix"]
        assert all(m[i][j] + m[j][i] == 1.0 for i in range(len(m)) for j in range(len(m)))
    bodies = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert any("Reference Answer]\nn 9" in t for t in bodies)


def test_position_biased_judge_gives_ties(serve) -> None:
    server = serve(lambda n, body: (200, completion("[[A]]"), 0.0))
    judge = LLMJudge(server.url, concurrency=2, client=fast_client(server.url))
    (result,) = judge.score([{"id": "x", "prompt_messages": [{"role": "user", "content": "q"}],
                              "samples": ["s1", "s2", "s3"]}])
    assert result["win_matrix"] == [[0.5] * 3] * 3 and result["errors"] == 0


def test_rank_cli_with_llm_judge(serve, cli, tmp_path) -> None:
    from selfplay.io import read_jsonl, write_jsonl

    server = serve(quality_judge)
    data = tmp_path / "samples.jsonl"
    write_jsonl(data, [
        {"id": "q1", "prompt_messages": [{"role": "user", "content": "pick"}], "samples": ["n 1", "n 4", "n 2"]},
        {"id": "q2", "prompt_messages": [{"role": "user", "content": "pick"}], "samples": ["garble", "n 3", "n 5"]},
    ])
    out = tmp_path / "rank.jsonl"
    result = cli(["rank", "--data", data, "--judge", f"llm-judge:{server.url}#judge-7b", "--out", out,
                  "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    q1, q2 = read_jsonl(out)
    assert q1["win_matrix"] == [[0.5, 0.0, 0.0], [1.0, 0.5, 1.0], [1.0, 0.0, 0.5]] and "scores" not in q1
    # both orders of both pairs with "garble" have no verdict: ties; the third pair is usable
    assert q2["errors"] == 4 and q2["win_matrix"] == [[0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 1.0, 0.5]]
    assert "4 judge replies without a verdict counted as ties" in result.output
    assert {r["body"]["model"] for r in server.requests} == {"judge-7b"}
    assert SECRET not in result.output and SECRET not in out.read_text()
