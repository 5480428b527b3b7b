"""`selfplay serve` under bursts and misuse, as a judge harness would meet it: a measurement, not a test.

Starts the real command (``python -m selfplay.cli.main serve --port 0``) on loopback, sends bursts of 16,
32 and 64 concurrent chat requests (one connection each, as OpenAI-style clients in threads do) and then
one request per kind of client mistake, and prints answered/sent per burst and the status of each request.
``--code DIR`` serves with another checkout's code (e.g. to compare with main)::

    python -m bench.serve_load --model smollm2-135m-instruct
    python -m bench.serve_load --model DIR --code ../main
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _ask(content: str = "What is 2 + 2?", **params: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **params}


# (what, body): each should be refused with a 4xx, except n: 5, which asks for five samples.
MISUSE: list[tuple[str, Any]] = [
    ("temperature: -1", _ask(temperature=-1)), ("top_p: 2", _ask(top_p=2)), ("max_tokens: 0", _ask(max_tokens=0)),
    ('temperature: "0.5"', _ask(temperature="0.5")), ("n: 0", _ask(n=0)), ("n: 5", _ask(n=5, temperature=0.7)),
    ("stream: true", _ask(stream=True)), ("role: robot", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("messages missing", {"model": "m"}), ("messages: []", {"messages": []}),
    ("logit_bias", _ask(logit_bias={"1": 2})), ("body not JSON", b"{oops"),
    ("400,000-character prompt", _ask("x " * 200_000)), ("5 MiB body", _ask("y" * (5 << 20))),
]


def _post(url: str, body: Any, timeout: float = 300) -> int | str:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:  # noqa: BLE001 (a reset or refused connection is what is being counted)
        return type(e).__name__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose selfplay serves (default: this one)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--skip-oversized", action="store_true", help="an old server may try to allocate it all")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(args.code), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model  # the server runs elsewhere
    server = subprocess.Popen([sys.executable, "-m", "selfplay.cli.main", "serve", "--model", model, "--port", "0",
                               "--max-tokens", str(args.max_tokens)], env=env, cwd=args.code,  # -m imports from cwd
                              stderr=subprocess.PIPE, text=True)
    try:
        url = next((m.group(1) for line in server.stderr  # type: ignore[union-attr]
                    if (m := re.search(r"(http://127\.0\.0\.1:\d+/v1)", line))), None)
        if url is None:
            sys.exit("the server did not start")
        print("| concurrent | answered/sent | seconds | failures |\n|---|---|---|---|")
        for n in (16, 32, 64):
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                results = list(pool.map(lambda i: _post(url, _ask(f"What is {i} + 1?", temperature=0.0)), range(n)))
            failed = {str(r): results.count(r) for r in set(results) if r != 200}
            print(f"| {n} | {results.count(200)}/{n} | {time.perf_counter() - start:.2f} | {failed or '–'} |")
        print("\n| request | status |\n|---|---|")
        for what, body in MISUSE:
            if args.skip_oversized and what.startswith(("400,000", "5 MiB")):
                continue
            print(f"| {what} | {_post(url, body)} |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
