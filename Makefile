# The two set-up commands of the README. Each creates .venv on a fresh clone, then runs.
.PHONY: quickstart test bench

quickstart:
	scripts/setup.sh
	.venv/bin/selfplay loop --config configs/quickstart.yaml

# The suite on 2 pytest-xdist workers (tests sharing an expensive fixture carry an xdist_group mark);
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2

test:
	scripts/setup.sh dev
	.venv/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

bench:
	scripts/setup.sh dev
	.venv/bin/python -m bench.run
