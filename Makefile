# The two set-up commands of the README. Each creates .venv on a fresh clone, then runs.
.PHONY: quickstart quickstart-gpm test bench

quickstart:
	scripts/setup.sh
	.venv/bin/selfplay loop --config configs/quickstart.yaml

# GPO with a GPM selfplay trains first (configs/quickstart_gpm.yaml explains the four steps).
QS_GPM := runs/quickstart_gpm
quickstart-gpm:
	scripts/setup.sh
	.venv/bin/selfplay data synth arith-prefs --out $(QS_GPM)/prefs --num 36 --test-size 12 --seed 1 --overwrite
	.venv/bin/selfplay train --method gpm --model smollm2-135m-instruct --data $(QS_GPM)/prefs/train.jsonl \
		--out $(QS_GPM)/judge --epochs 1 --batch-size 8 --lr 3e-5 --max-length 256
	.venv/bin/selfplay eval preference -m $(QS_GPM)/judge/model --data $(QS_GPM)/prefs/test.jsonl \
		--out $(QS_GPM)/judge_eval
	.venv/bin/selfplay loop --config configs/quickstart_gpm.yaml

# The suite on 2 pytest-xdist workers (tests sharing an expensive fixture carry an xdist_group mark);
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2

test:
	scripts/setup.sh dev
	.venv/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

bench:
	scripts/setup.sh dev
	.venv/bin/python -m bench.run
