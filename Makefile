VENV = .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
STAMP = $(VENV)/.installed
SCENARIOS = ../shared/scenarios

.PHONY: venv demo test scenarios bench bench-quick clean

venv: $(STAMP)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/ledger demo

test: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

scenarios: venv
	@if [ -d $(SCENARIOS) ]; then \
		python3 $(SCENARIOS)/check.py --ledger "$(VENV)/bin/ledger" $(SCENARIOS)/*.yaml; \
	else \
		echo "no $(SCENARIOS) folder: nothing to check"; \
	fi

bench: venv
	$(VENV)/bin/python -m bench.run --scale district

bench-quick: venv
	$(VENV)/bin/python -m bench.run --scale quick

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
