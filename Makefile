VENV = .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
STAMP = $(VENV)/.installed
SCENARIOS = ../shared/scenarios
# pytest processes for make test (ADR 0024): the suite waits on servers, brokers and browsers
# much of its time, so two processes on two cores finish in well under half the time of one.
TEST_WORKERS ?= 2

.PHONY: venv demo test scenarios bench bench-quick bench-city clean

venv: $(STAMP)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test,bench]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/ledger demo

test: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS)

# The external acceptance set is required: without ../shared/scenarios this target fails (exit 2), so CI, which always has it, notices.
scenarios: venv
	@if [ -d $(SCENARIOS) ]; then \
		python3 $(SCENARIOS)/check.py --ledger "$(VENV)/bin/ledger" $(SCENARIOS)/*.yaml; \
	else \
		echo "make scenarios: the external acceptance set lives in $(SCENARIOS), beside this checkout, and it is missing." >&2; \
		echo "  (its public scenarios also run from tests/acceptance/ in 'make test')" >&2; \
		exit 2; \
	fi

# Issue 16's figures beside raw eventsourcing baselines from the same run, on a fresh PostgreSQL
# database (bench/results/latest.json). district: 10,000 recipients, one year; quick: 40, < 2 min.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--skip relay" or "--group-size 200".
bench: venv
	$(VENV)/bin/python -m bench.run --scale district $(BENCH_ARGS)

bench-quick: venv
	$(VENV)/bin/python -m bench.run --scale quick $(BENCH_ARGS)

# Issue 18's city: one district process vs two, lock waits, the city view's lag on JetStream, kill -9
# (bench/city.py; bench/results/latest-city.json, < 20 min). BENCH_ARGS="--districts 4 --skip kill".
bench-city: venv
	$(VENV)/bin/python -m bench.run --scale city $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
