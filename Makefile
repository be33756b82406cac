# Two commands: `make demo` (the main job, end to end, on real data) and `make test`.
# Both create .venv when it is missing and install what they need; `make test` also
# creates .venv-gateway (a gateway's packages only: no torch) for its second run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GATEWAY_VENV ?= .venv-gateway
GW_PY := $(GATEWAY_VENV)/bin/python
# The gateway venv gets a copy of the package (pip install ., as a gateway does, not -e):
# reinstalled when any file of it changes.
PACKAGE_FILES := pyproject.toml $(shell find edge export -type f -not -path '*/__pycache__/*')
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench venv gateway-venv mosquitto chromium js clean

# $(call new_venv,DIR): python3 -m venv DIR, installing Debian's python3-venv when it lacks.
define new_venv
$(PYTHON) -m venv $(1) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(1); }
$(1)/bin/python -m pip install -q --upgrade "pip>=23"
endef

$(PY):
	$(call new_venv,$(VENV))

$(GW_PY):
	$(call new_venv,$(GATEWAY_VENV))

# The stamp files re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[export,dev]"
	touch $@

venv: $(VENV)/.installed

# build/ goes first: setuptools would copy the modules it kept from an earlier build (ones
# the tree no longer has) into the wheel.
$(GATEWAY_VENV)/.installed: $(PACKAGE_FILES) | $(GW_PY)
	rm -rf build
	$(GW_PY) -m pip install -q ".[test-gateway]"
	touch $@

gateway-venv: $(GATEWAY_VENV)/.installed

# Mosquitto (broker and the mosquitto_pub/sub clients) from Debian's packages.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y mosquitto mosquitto-clients; }

# Debian's Chromium: the pilot report is rendered to PNG and PDF in tests/test_pilot_report.py.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# The JavaScript the tests run as the other side of an integration, each folder with its
# committed package-lock.json (node_modules is not committed): Eclipse Tahu's Sparkplug B
# decoder (tests/test_sparkplug.py) and Node-RED 4.1, which runs on node >= 18.5
# (tests/test_node_red.py, the flow of deploy/node-red/ run headless). node and npm come from
# Debian's packages when missing.
JS_DIRS := tests/js/sparkplug tests/js/node-red

tests/js/%/node_modules/.installed: tests/js/%/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm; }
	cd tests/js/$* && npm ci --no-audit --no-fund
	touch $@

js: $(JS_DIRS:%=%/node_modules/.installed)

# The full suite, then the gateway's tests in the gateway venv (tests/conftest.py: no torch
# there, bundles from tests/data, a skip fails), by its bin/pytest and without PYTHONPATH:
# `python -m pytest` or PYTHONPATH would import this tree instead of the installed copy.
test: venv gateway-venv mosquitto chromium js
	$(PY) -m pytest
	env -u PYTHONPATH EDGE_TESTS=gateway $(GATEWAY_VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check edge export tests benchmarks

demo: venv mosquitto
	$(PY) -m export.demo --out $(DEMO_OUT)

bench: venv mosquitto
	$(PY) benchmarks/adaptation.py --base-dir $(DEMO_OUT)
	$(PY) benchmarks/defaults.py --base-dir $(DEMO_OUT)
	$(PY) benchmarks/pilot_validation.py --base-dir $(DEMO_OUT)
	$(PY) benchmarks/model_size.py --base-dir $(DEMO_OUT)/bases
	$(PY) benchmarks/export.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/pipeline_scaling.py
	$(PY) benchmarks/mqtt_wire.py
	$(PY) benchmarks/swap.py
	$(PY) benchmarks/soak.py  # 10 minutes

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build
