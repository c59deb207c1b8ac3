# Every target creates .venv (with meshgate and its dev tools installed) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint venv clean pg pg-stop

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "meshgate needs Python 3.11 or newer: run make PY=python3.11 ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/meshgate demo

# PostgreSQL tests run when MESHGATE_TEST_PG is set, or after `make pg` (which
# writes .ci/pg.env); otherwise they are skipped with the reason.
# pytest exit 5 means it collected no tests (e.g. a PYTEST_ARGS selection that
# matches nothing): that is a failure too, said plainly.
test: $(STAMP)
	if [ -z "$${MESHGATE_TEST_PG:-}" ] && [ -f .ci/pg.env ]; then . ./.ci/pg.env; export MESHGATE_TEST_PG; fi; \
	rc=0; $(BIN)/python -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

# A throwaway PostgreSQL on 127.0.0.1 for the PostgreSQL tests (installs Debian's
# postgresql if missing); reused while it runs. `make pg-stop` removes it.
pg:
	bash .ci/postgres.sh

pg-stop:
	bash .ci/postgres.sh stop

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check meshgate tests bench
	$(BIN)/mypy meshgate

clean:
	rm -rf $(VENV) build *.egg-info
