# The README's two commands: `make demo` and `make test`. Each builds its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The whole tree (eventd's libraries, its build backend, the test and lint extras) at fixed
# versions, each file checked against its hash; requirements/runtime.txt is the image's part
# of it. setup.cfg keeps the ranges; `make lock` renews both files within them.
LOCK := requirements/dev.txt
RUNTIME_LOCK := requirements/runtime.txt
# `make test-latest`: the suite against the newest versions setup.cfg's ranges allow.
LATEST ?= .venv-latest

.PHONY: demo test test-latest lock wheelhouse fuzz bench soak chaos emulate check clean

$(STAMP): setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	# setuptools' advice printed on every editable install ("Editable installation...") is noise here
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eventd demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A fresh virtualenv with the newest release of every library the ranges allow (no lock), and
# the suite on it, less the tests that check the lock itself (lint, the image): a release that
# breaks eventd shows here before a user installs it. When every newest release is the lock's
# own version, `make test` has just run the suite on exactly them, and this stops there.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip setuptools wheel
	PYTHONWARNINGS=ignore $(LATEST)/bin/pip install --quiet --upgrade -e '.[test]'
	$(LATEST)/bin/pip check
	$(LATEST)/bin/pip list --format=freeze --exclude-editable | tr '\n' ' '; echo
	# the suite again only if some library moved past the lock (TEST_LATEST=always forces it)
	status=0; $(LATEST)/bin/python -m tests.lock_drift $(LOCK) || status=$$?; \
	if [ $$status -eq 0 ] || [ "$(TEST_LATEST)" = always ]; then \
		$(LATEST)/bin/python -m pytest -q -m 'not locked' $(PYTEST_ARGS); \
	elif [ $$status -ne 3 ]; then exit $$status; fi

# Renew the lock: the newest versions within setup.cfg's ranges, with their hashes, for every
# Python 3.11+ on every platform (uv's universal mode writes markers: Debian 12's Python
# 3.11.2 needs async-timeout for redis, 3.11.7 does not). The image's part first, then the
# whole tree constrained to it, so both name the same versions.
COMPILE := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--upgrade --custom-compile-command 'make lock' setup.cfg requirements/build.in
lock: $(STAMP)
	$(BIN)/pip install --quiet 'uv>=0.5'
	$(COMPILE) --output-file $(RUNTIME_LOCK)
	$(COMPILE) --extra test --extra lint --constraint $(RUNTIME_LOCK) --output-file $(LOCK)
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes --upgrade \
		--custom-compile-command 'make lock' requirements/bench.in --output-file $(BENCH_LOCK)

# deploy/wheels/: the image's wheels from the lock (each hash checked), for a build without
# network: docker build --network none --build-arg PIP_NO_INDEX=1 -f deploy/Dockerfile .
wheelhouse: $(STAMP)
	$(BIN)/python -m tests.image_build deploy/wheels

# The property-based tests with many more random examples (make test runs them bounded).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --timeout=1800 tests/fuzz $(PYTEST_ARGS)

emulate: $(STAMP)
	$(BIN)/eventd emulate

# The bench's own lock (wsaccel, for the bare websocket-client loop it compares with).
BENCH_LOCK := requirements/bench.txt
$(VENV)/.bench-installed: $(STAMP) $(BENCH_LOCK)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(BENCH_LOCK)
	touch $@

# Everything (`make bench BENCH_ARGS="--only callgrind"`: only the instruction counts).
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# 15 minutes of steady stream and random faults (SOAK_ARGS="--minutes 3" for a short one).
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Faults on a loaded cluster in network namespaces (root), then the checker's verdicts:
# 10 minutes, 100 ev/s over 4 namespaces and 3 replicas (CHAOS_ARGS="--seed 7 --minutes 3").
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

check: $(STAMP)
	$(BIN)/eventd check rules/

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info deploy/wheels/*.whl
