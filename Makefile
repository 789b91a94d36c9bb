# One entry point for the dev loop; README and CI call these targets.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install run test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

PORT ?= 8000

# The service with the example actors on the embedded default storage (SQLite per user).
run: install
	$(VENV)/bin/actorflow serve examples.bank examples.cart examples.order examples.trip examples.approval --port $(PORT)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check actorflow deployments examples tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.steps
	$(PY) -m bench.actors
	$(PY) -m bench.http
	$(PY) -m bench.timers

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
