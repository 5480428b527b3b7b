"""A selfplay process's start: full garbage collections paused while its libraries import, the import-time
objects frozen before its first model, then collections as by default (selfplay.models says why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# In a fresh interpreter (the test session froze its own objects already): the CLI's start, a model load.
_PROBE = """
import gc, json, sys
from selfplay.models import freeze_import_time_objects, load_model, pause_full_collections
default = gc.get_threshold()
pause_full_collections()
paused = gc.get_threshold()
import torch, transformers  # what a command imports before its model (collected young only)
model, tok = load_model(sys.argv[1])
print(json.dumps({"default": default, "paused": paused, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "unfrozen": len(gc.get_objects())}))
"""


def test_collections_pause_until_the_first_model_then_its_imports_are_frozen(tiny_model: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tiny_model)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["paused"][:2] == r["default"][:2] and r["paused"][2] >= 1 << 30  # young generations as usual
    assert r["after"] == r["default"]
    assert r["frozen"] > 200_000
    # Frozen with transformers' modeling stack: what a full collection still walks is the model and the
    # loading's leftovers (~15k objects measured), not the ~210k objects of the lazily imported stack.
    assert r["unfrozen"] < 60_000, r["unfrozen"]


_ENTRY_PROBE = """
import gc, json, sys
from pathlib import Path
out = {"default": gc.get_threshold()}
from selfplay.cli.main import app
app(["config", "show"], standalone_mode=False)  # a command that loads no model
out["cli"] = gc.get_threshold()
gc.set_threshold(*out["default"])
import selfplay.stages.worker as worker
worker._run = lambda cfg, args: out.__setitem__("worker", gc.get_threshold())
config = Path(sys.argv[1])
config.write_text("method: spin\\n")
worker.main(["generate", "--shards", "0", "--num-shards", "1", "--config", str(config), "--data", "x", "--out", "y"])
print(json.dumps(out))
"""


def test_the_cli_and_the_workers_pause_collections_at_their_start(tmp_path: Path) -> None:
    """Both entry points (a CLI command, a launched worker) pause full collections as they start."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _ENTRY_PROBE, str(tmp_path / "config.yaml")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["default"][2] < 1 << 30
    assert r["cli"][2] >= 1 << 30 and r["worker"][2] >= 1 << 30, r
