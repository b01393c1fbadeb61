# Set-up and everyday commands. `make demo` and `make test` create .venv and
# install the project with the pinned versions of constraints.txt first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint bench bench-cost clean cap-server

CAP_DIR := tests/cap
CAP_INSTALLED := $(CAP_DIR)/node_modules/.installed

$(INSTALLED): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Fonte needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Extra options for the demo, e.g. make demo DEMO_ARGS='--port 0 --erp sql'
DEMO_ARGS ?=

demo: $(INSTALLED)
	$(BIN)/fonte demo $(DEMO_ARGS)

# The SAP CAP server that tests/cap starts, installed from its lock file.
# Without npm the CAP tests skip, or fail under FONTE_REQUIRE_SERVICES=1.
$(CAP_INSTALLED): $(CAP_DIR)/package.json $(CAP_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(CAP_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
		echo "npm not found: the SAP CAP tests in $(CAP_DIR) will skip; install Node.js 20"; \
	fi

cap-server: $(CAP_INSTALLED)

test: $(INSTALLED) $(CAP_INSTALLED)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy
	MYPYPATH=tests $(BIN)/mypy --strict tests

# Fonte beside Apollo Gateway and Hive Gateway; needs Node 20 or newer and npm.
# Extra options, e.g. make bench BENCH_ARGS='--quick'
BENCH_ARGS ?=

bench: $(INSTALLED)
	bench/run $(BENCH_ARGS)

bench-cost: $(INSTALLED)
	$(BIN)/python bench/query_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CAP_DIR)/node_modules
