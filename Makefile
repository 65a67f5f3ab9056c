# The README's two commands: `make demo` and `make test`. Each builds its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz bench soak emulate check clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# setuptools' advice printed on every editable install ("Editable installation...") is noise here
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eventd demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The property-based tests with many more random examples (make test runs them bounded).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --timeout=1800 tests/fuzz $(PYTEST_ARGS)

emulate: $(STAMP)
	$(BIN)/eventd emulate

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# 15 minutes of steady stream and random faults (SOAK_ARGS="--minutes 3" for a short one).
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

check: $(STAMP)
	$(BIN)/eventd check rules/

clean:
	rm -rf $(VENV) build *.egg-info
