# The two commands of the README quick start. Both create .venv and install the locked
# dependencies (constraints.txt) the first time, and again whenever those files change.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
SAMPLE_BBOX := 9.16,48.76,9.18,48.78

.PHONY: demo test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/city-audit run --bbox $(SAMPLE_BBOX) --source sample --model tiny --out outputs/stuttgart-sample

test: $(STAMP)
	$(VENV)/bin/python -m pytest
