"""`selfplay serve` answers OpenAI-style chat requests (checked with our own judge client) and decodes
concurrent requests together."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture
def served(tiny_model):
    from selfplay.core.samplers import make_sampler
    from selfplay.evals.serve import make_server

    sampler = make_sampler("hf", str(tiny_model), batch_size=8, device="cpu")
    server = make_server(sampler, "tiny", port=0, max_tokens=8, batch_size=8)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, sampler, f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_chat_completions_roundtrip(served):
    from selfplay.judges.http import ChatClient

    server, sampler, base = served
    client = ChatClient(base, "tiny", max_retries=0, timeout=30)
    greedy = [client.chat([{"role": "user", "content": "What is 2 + 2?"}], temperature=0.0, max_tokens=50)
              for _ in range(2)]
    assert greedy[0] == greedy[1] and isinstance(greedy[0], str)
    # max_tokens is capped by the server: 8 tokens at most
    assert len(sampler.tokenizer(greedy[0], add_special_tokens=False)["input_ids"]) <= 8
    with pytest.raises(urllib.error.HTTPError, match="400"):
        urllib.request.urlopen(urllib.request.Request(base + "/chat/completions", data=b'{"no": "messages"}'))
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(base + "/embeddings")
    assert json.loads(urllib.request.urlopen(base + "/models").read())["data"][0]["id"] == "tiny"


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
