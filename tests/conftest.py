"""Shared fixtures: offline environment, the tiny model, paths to the real data samples."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests never touch a hub: set before transformers/datasets are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from a second thread, and on a busy 2-core box two OpenMP threads per process
# oversubscribe the cores (tests then run many times slower). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _import_then_freeze() -> None:
    """Import the libraries nearly every test loads, then exempt their objects from garbage collection
    (:func:`selfplay.models.freeze_import_time_objects`, which says why): the stages' ``release_memory`` then
    walks only what the tests made, not ~400k import-time objects (6.4 s of a 13.5 s loop test)."""
    import datasets  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers
    import trl  # noqa: F401

    transformers.LlamaForCausalLM, transformers.AutoTokenizer  # noqa: B018 (loads the lazy modules)
    import selfplay.cli.main  # noqa: F401
    import selfplay.stages.evaluate  # noqa: F401
    import selfplay.stages.loop  # noqa: F401
    import selfplay.stages.train  # noqa: F401
    from selfplay.models import freeze_import_time_objects

    freeze_import_time_objects()


_import_then_freeze()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Kill any CLI process a failed test left running (:mod:`cli_process`)."""
    import sys

    if "cli_process" in sys.modules:
        sys.modules["cli_process"].stop_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start several processes first: they are the longest, and under ``-n 2`` (make test) a long
    test started last leaves the other worker idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("distributed") is None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples in ../shared/data (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama + offline BPE tokenizer with a chat template, as an HF directory."""
    from selfplay.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_spin_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-iteration SPIN loop on the tiny model (read, never written, by the tests that use it).

    Its starting model is a copy of the tiny model with a model card naming a hub base model and a
    license, so the cards of the trained model have something to copy.
    """
    import shutil

    from typer.testing import CliRunner

    from selfplay.cli.main import app

    root = tmp_path_factory.mktemp("spin-run")
    start = root / "tiny-with-card"
    shutil.copytree(tiny_model, start)
    (start / "README.md").write_text("---\nbase_model: selfplay-test/tiny-llama\nlicense: mit\n---\n# tiny\n")
    args = ["loop", "--method", "spin", "--iters", "1", "--model", start, "--data", "synth:arith",
            "--run-dir", root / "run", "--set", "data.num=14", "--set", "data.eval_num=4",
            "--set", "generate.max_new_tokens=8", "--set", "generate.batch_size=5", "--set", "train.batch_size=5",
            "--set", "train.precision=fp32", "--set", "eval.max_new_tokens=8"]
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return root / "run"


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny sequence-classification reward model (distinct scores for distinct texts)."""
    from selfplay.testing import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny-rm")


@pytest.fixture
def cli():
    """Invoke the real CLI in-process: cli(["data", "inspect", path]) -> click Result."""
    from typer.testing import CliRunner

    from selfplay.cli.main import app

    runner = CliRunner()

    def invoke(args: list[str], **kw):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)

    return invoke


@pytest.fixture
def chat_server() -> Iterator[Callable]:
    """start(script) -> a scripted OpenAI-compatible server on 127.0.0.1 (tests/chat_server.py); closed after."""
    from chat_server import ChatServer

    servers: list[ChatServer] = []

    def start(script):
        servers.append(ChatServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def judge_server(chat_server) -> Callable:
    """start(script) where script(number, messages) -> (status, reply text): the judge-reply form."""
    from chat_server import chat_script

    return lambda script: chat_server(chat_script(script))
