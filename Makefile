# Two commands (see README): `make demo` installs everything and runs the main job on the
# shipped default model; `make test` installs everything and runs the test suite: the fast
# suite, then stages of their own: the chaos scenario (tests/chaos, about a minute), the wheel
# installed in a fresh venv and run outside the checkout (tests/packaging), and the deployment
# (tests/deploy: the image built and run with podman, replicas behind nginx; they install
# podman/nginx with apt when missing, and skip only where that is impossible). Before them,
# the documentation site is built with --strict, so a dead link fails the run.
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
	$(PY) -m pytest -m "not slow and not chaos and not wheel and not container and not nginx"
	$(PY) -m pytest -m chaos tests/chaos
	$(PY) -m pytest -m wheel tests/packaging
	$(PY) -m pytest -m "container or nginx" tests/deploy

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
