# reelflow: `make demo` and `make test` work from a fresh clone; both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

# No telemetry from the engines; Ray/Prefect/GX settings shared by every target.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

CHECKOV := .venv-checkov/bin/checkov

.PHONY: install demo test test-fast bench lock clean .venv-checkov

install: $(STAMP) $(CHECKOV)

$(STAMP): pyproject.toml constraints.txt
	@command -v ffmpeg >/dev/null || { echo "installing ffmpeg (Debian)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg) >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(VENV)/bin/pip install -q uv
	# --compile-bytecode: uv writes no .pyc by default, and with PYTHONDONTWRITEBYTECODE (set on the
	# CI image) nor does Python, so every process compiled torch, Ray and transformers from source:
	# a fresh Ray worker spent ~6 s importing torch, a MiniLM load 13 s (2.3 s and 5.6 s compiled).
	$(UV) pip install --python $(PY) -q --compile-bytecode -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# checkov pins versions that clash with the main environment (boto3, packaging): its own venv.
.venv-checkov: $(CHECKOV)
$(CHECKOV): infra/requirements-checkov.txt infra/constraints-checkov.txt $(STAMP)
	@test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	$(UV) pip install --python .venv-checkov/bin/python -q --compile-bytecode -c infra/constraints-checkov.txt -r infra/requirements-checkov.txt
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/reelflow demo --output demo_output

test: $(STAMP) $(CHECKOV)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

bench: $(STAMP)
	$(PY) bench/curate_throughput.py
	$(PY) bench/scoring_throughput.py
	$(PY) bench/train_throughput.py

# Re-pin constraints.txt to what is installed now (after changing dependencies in pyproject.toml).
lock: $(STAMP)
	$(UV) pip freeze --python $(PY) | grep -v -E '^(-e |reelflow)' > constraints.txt
	$(UV) pip freeze --python .venv-checkov/bin/python > infra/constraints-checkov.txt

clean:
	rm -rf demo_output .pytest_cache
