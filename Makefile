# The README's commands. `make demo` installs the package alone (its runtime dependencies);
# `make test` and `make lint` install the test tools too (`.[test]`). Each sets up .venv on first
# use, and each install has its own stamp, so the demo never waits for the test toolchain.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# .ci/run and the helpers' setup touch .installed after installing '.[test]': keep that name.
TEST_STAMP := $(VENV)/.installed
PKG_STAMP := $(VENV)/.installed-package

.PHONY: demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)

$(PKG_STAMP): pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) -e '.[test]'
	touch $@

demo: $(PKG_STAMP)
	$(VENV)/bin/batchgen run sample_manifests/quickstart.yaml --fake --yes

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check batchgen tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -n 3 --dist loadgroup

bench: $(TEST_STAMP)
	$(PIP) -e '.[test,bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) jobs/quickstart
