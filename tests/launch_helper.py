"""A stand-in worker for the launcher tests: ``python -m launch_helper OUT ACTION``.

Writes its pid and the environment the launcher gave it to OUT/<pid>.json, then ``sleep`` (60 s),
``fail`` (exit 3 after a moment) or ``ok``. With ``watch`` it first arms the exit-with-parent watchdog.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    out, action = Path(sys.argv[1]), sys.argv[2]
    if "watch" in sys.argv[3:]:
        from selfplay.core.launchers import exit_with_parent

        exit_with_parent()
    keys = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "SELFPLAY_PARENT_PID", "SELFPLAY_LAUNCHED")
    (out / f"{os.getpid()}.json").write_text(json.dumps({"action": action, **{k: os.environ.get(k) for k in keys}}))
    if action == "sleep":
        time.sleep(60)
    elif action == "fail":
        time.sleep(0.5)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
