# Every target creates .venv (with meshgate and its dev tools installed) on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint venv clean pg pg-stop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/meshgate demo

# PostgreSQL tests run when MESHGATE_TEST_PG is set, or after `make pg` (which
# writes .ci/pg.env); otherwise they are skipped with the reason.
test: $(STAMP)
	if [ -z "$${MESHGATE_TEST_PG:-}" ] && [ -f .ci/pg.env ]; then . ./.ci/pg.env; export MESHGATE_TEST_PG; fi; \
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

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
