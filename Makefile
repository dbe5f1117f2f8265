# The two commands of the README's quickstart. Each sets up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/batchgen run sample_manifests/quickstart.yaml --fake --yes

lint: $(STAMP)
	$(VENV)/bin/ruff check batchgen tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -n 3 --dist loadgroup

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) jobs/quickstart
