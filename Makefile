# `make demo` and `make test` set up everything they need in .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_output
MMOR_DIR ?=

.PHONY: install demo app test bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[video,app,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --output_dir $(DEMO_DIR)

# The demo page on the demo's outputs (world model, probes, videos), and the takes of MMOR_DIR when given:
# http://127.0.0.1:7860
app: $(STAMP)
	$(PY) scripts/app.py --demo_dir $(DEMO_DIR) $(if $(MMOR_DIR),--mmor_dir $(MMOR_DIR))

test: $(STAMP)
	$(PY) -m pytest tests

# Every benchmark script; bench_utils.py is their shared helper module, not a benchmark.
BENCHMARKS := $(sort $(filter-out benchmarks/bench_utils.py,$(wildcard benchmarks/bench_*.py)))

bench: $(STAMP)
	@set -e; for script in $(BENCHMARKS); do echo "$(PY) $$script"; $(PY) $$script; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
