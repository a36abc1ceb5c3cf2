# Two commands: `make run` (set up, then run the main job on its embedded default) and
# `make test` (set up, then run the test suite). Everything lives in .venv.
PY := .venv/bin/python
# Let Python cache compiled modules in .venv even where PYTHONDONTWRITEBYTECODE is set (CI): scripts/setup.sh
# compiles what the jobs import; anything else is compiled once, on first import, instead of in every process.
export PYTHONDONTWRITEBYTECODE :=
# Two pytest-xdist workers, one test file each at a time (a file's module-scoped Ray stays on one worker), in
# the order of tests/conftest.py (longest files first; xdist would otherwise start the files with most tests);
# `make test XDIST=` runs in one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: setup setup-dev run test lint bench
setup:
	bash scripts/setup.sh
setup-dev:
	bash scripts/setup.sh dev
run: setup
	$(PY) jobs/flow_dpo.py $(ARGS)
test: setup-dev
	$(PY) -m pytest -q $(XDIST) $(ARGS)
lint: setup-dev
	.venv/bin/ruff check .
bench: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

