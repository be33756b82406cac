# Two commands: `make demo` (the main job, end to end, on real data) and `make test`.
# Both create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench venv mosquitto clean

$(PY):
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade "pip>=23"

# The stamp files re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[export,dev]"
	touch $@

venv: $(VENV)/.installed

# Mosquitto (broker and the mosquitto_pub/sub clients) from Debian's packages.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y mosquitto mosquitto-clients; }

test: venv mosquitto
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check edge export tests benchmarks

demo: venv mosquitto
	$(PY) -m export.demo --out $(DEMO_OUT)

bench: venv mosquitto
	$(PY) benchmarks/adaptation.py
	$(PY) benchmarks/export.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/swap.py
	$(PY) benchmarks/soak.py  # 10 minutes

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build
