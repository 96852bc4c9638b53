# Two commands (see README): `make demo` installs everything and runs the main job on the
# shipped default model; `make test` installs everything and runs the test suite: the fast
# suite, then the chaos scenario (tests/chaos, about a minute) as a stage of its own. Before
# them, the documentation site is built with --strict, so a dead link fails the run.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow lint protos docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,export,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/tandem demo

test: install
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mkdocs build --strict
	$(PY) -m pytest -m "not slow and not chaos"
	$(PY) -m pytest -m chaos tests/chaos

docs: install
	$(VENV)/bin/mkdocs build --strict

test-slow: install
	$(PY) -m pytest -m slow

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

protos: install
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
