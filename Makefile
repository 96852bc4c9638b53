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

.PHONY: install test-deps demo test test-slow lint protos docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,export,docs]'
	touch $(STAMP)

install: $(STAMP)

# espeak-ng speaks the speech model's training data (tools/speech_data.py); cheap with apt as
# root, and without it the tests that need it skip, saying why. Only the tests need it.
test-deps: install
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; } \
	  || echo "note: espeak-ng is not installed (apt-get install espeak-ng); speech-data tests skip"

demo: install
	$(VENV)/bin/tandem demo

test: test-deps
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
