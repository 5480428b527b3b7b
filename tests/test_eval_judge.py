"""The eval judge: verdict/rating parsing, order combination, and a real OpenAI-compatible HTTP server
(``judge_server`` fixture, tests/chat_server.py)."""

from __future__ import annotations

import pytest
from chat_server import RAW_BODY

from selfplay.evals.judging import (HttpJudge, combine_orders, is_url, judge_conversation, make_chat_judge,
                                    parse_rating, parse_verdict, preference)


def test_rating_parsing_follows_fastchat_with_errors_not_zero() -> None:
    assert parse_rating("Good answer. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: [[8.5]] then [[2]]") == 8.5  # the first [[r]], like FastChat
    assert parse_rating("Rating: [6]") == 6.0  # fallback to single brackets
    assert parse_rating("[[A]] is better") is None
    assert parse_rating("I cannot rate this.") is None
    assert parse_rating("Rating: [[0]]") is None and parse_rating("Rating: [[11]]") is None


def test_verdict_parsing_and_both_orders() -> None:
    assert parse_verdict('Output "[[A]]" if A is better... My verdict: [[B]]') == "B"
    assert parse_verdict("[[C]]") == "tie"
    assert parse_verdict("both are fine") == "error"
    # first order: A = model; second order: A = baseline
    assert combine_orders("A", "B") == "model"
    assert combine_orders("B", "A") == "baseline"
    assert combine_orders("A", "A") == "tie"  # flips with the order: position bias
    assert combine_orders("tie", "tie") == "tie"
    assert combine_orders("A", "tie") == "tie"
    assert combine_orders("error", "B") == "error" and combine_orders("A", "error") == "error"
    assert [preference(o) for o in ("model", "baseline", "tie")] == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        preference("error")


def test_http_judge_retries_a_500_keeps_order_and_stops_on_a_malformed_reply(judge_server, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfplay.config import RemoteConfig
    from selfplay.judges.http import MalformedReplyError

    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret")
    malformed = {"q3"}

    def script(number: int, messages: list[dict]) -> tuple[int, str]:
        if number == 0:
            return 500, "overloaded"
        if messages[-1]["content"] in malformed:
            return 200, RAW_BODY + '{"unexpected": true}'
        return 200, f"echo {messages[-1]['content']} [[A]]"

    server = judge_server(script)
    judge = make_chat_judge(server.url, judge_model="judge-x", api_key_env="MY_JUDGE_KEY", parallel=3,
                            remote=RemoteConfig(max_retries=2, backoff=0.01))
    assert isinstance(judge, HttpJudge) and is_url(server.url)
    conversations = [judge_conversation("sys", f"q{i}") for i in range(5)]
    # a 200 reply that is not a chat completion is a transport fault: retried, then an error naming the record
    with pytest.raises(MalformedReplyError, match="record q3: the reply is not a chat completion"):
        judge.complete(conversations, max_tokens=16, labels=[f"record q{i}" for i in range(5)])
    assert sum(r["body"]["messages"][-1]["content"] == "q3" for r in server.requests) == 3
    malformed.clear()
    replies = judge.complete(conversations, max_tokens=16)
    assert replies == [f"echo q{i} [[A]]" for i in range(5)]
    assert server.statuses.count(500) == 1
    sent = server.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["authorization"] == "Bearer sk-secret"
    assert sent["body"]["temperature"] == 0.0 and sent["body"]["model"] == "judge-x"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "sys"}
    assert judge_conversation("", "u") == [{"role": "user", "content": "u"}]
