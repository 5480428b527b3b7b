"""Imports between selfplay's modules point one way and form no cycle (scripts/check_layers.py), and the checker
fails on a planted upward import and on a planted cycle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO / "scripts" / "check_layers.py"


def check(root: Path | None = None, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(CHECKER), *args] + (["--root", str(root)] if root is not None else [])
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_selfplay_imports_point_down_without_cycles():
    result = check()
    assert result.returncode == 0, result.stderr
    assert "all pointing down, no cycles" in result.stdout


def _package(root: Path, files: dict[str, str]) -> Path:
    """A miniature selfplay tree under ``root`` (every package gets an __init__.py)."""
    for name, text in files.items():
        path = root / "selfplay" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in [path.parent, *path.parent.parents]:
            if parent == root:
                break
            (parent / "__init__.py").touch()
        path.write_text(text)
    return root


def test_a_clean_miniature_tree_passes(tmp_path: Path):
    root = _package(tmp_path, {
        "io.py": "import json\n",
        "core/losses.py": "from selfplay.io import json\n",
        "stages/train.py": "from selfplay.core import losses\n\ndef f():\n    from selfplay.io import json\n",
        "cli/train.py": "import selfplay.stages.train\n",
    })
    result = check(root, "--list")
    assert result.returncode == 0, result.stderr
    assert "selfplay.stages.train:1 -> selfplay.core.losses" in result.stdout
    assert "selfplay.stages.train:4 -> selfplay.io  (lazy)" in result.stdout


def test_an_upward_import_fails(tmp_path: Path):
    root = _package(tmp_path, {
        "stages/progress.py": "BAR = 1\n",
        "evals/mt_bench.py": "from selfplay.stages.progress import BAR\n",  # evals is below stages
    })
    result = check(root)
    assert result.returncode == 1
    assert "selfplay.evals.mt_bench (line 1) imports selfplay.stages.progress, a higher layer" in result.stderr


def test_a_lazy_upward_import_fails_too(tmp_path: Path):
    root = _package(tmp_path, {
        "cli/main.py": "X = 1\n",
        "core/samplers.py": "def load():\n    from selfplay.cli.main import X\n    return X\n",
    })
    result = check(root)
    assert result.returncode == 1 and "selfplay.core.samplers (line 2) imports selfplay.cli.main" in result.stderr


def test_a_cycle_fails_even_within_one_layer_and_through_a_lazy_import(tmp_path: Path):
    root = _package(tmp_path, {
        "core/decoding.py": "def decode():\n    from selfplay.core.fast_decode import step\n",
        "core/fast_decode.py": "from selfplay.core.decoding import decode\n\ndef step():\n    pass\n",
        "core/ok.py": "from selfplay.core import decoding\n",
    })
    result = check(root)
    assert result.returncode == 1
    assert "import cycle: selfplay.core.decoding -> selfplay.core.fast_decode -> selfplay.core.decoding" in result.stderr
    assert "ok" not in result.stderr  # a module that only imports into the cycle is not part of it


def test_a_longer_cycle_is_reported_as_a_path(tmp_path: Path):
    root = _package(tmp_path, {
        "stages/a.py": "from selfplay.stages import b\n",
        "stages/b.py": "from selfplay.stages import c\n",
        "stages/c.py": "def f():\n    import selfplay.stages.a\n",
    })
    result = check(root)
    assert result.returncode == 1
    assert "import cycle: selfplay.stages.a -> selfplay.stages.b -> selfplay.stages.c -> selfplay.stages.a" in result.stderr


def test_a_module_in_no_layer_is_an_error(tmp_path: Path):
    result = check(_package(tmp_path, {"plugins/x.py": "import selfplay.io\n", "io.py": ""}))
    assert result.returncode != 0 and "plugins" in result.stderr
