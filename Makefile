# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test bench install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,vizier]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m deeplab_dpc.demo

# The suite under Keras 3 (the benchmarks' own tests, tests/bench, run with
# `make bench`), then the layer and model-building tests again under tf_keras
# (TF_USE_LEGACY_KERAS=1), which tensorflow-model-optimization needs (the
# QAT and pruning tests also run their tf_keras subprocess in the first
# pass; DeepLab's own backbones check tf_keras in a subprocess of their own
# tests), then the layers, the model and the training step with oneDNN
# flipped from what TensorFlow chose here (TF_ENABLE_ONEDNN_OPTS=0 on an
# Intel AVX-512 machine, =1 on one where it is off), so each machine tests
# both CPU kinds' kernels (docs/portability.md); tests/test_portability.py
# runs training, export, resume and serving under both. The passes are
# chosen to keep the suite under 20 minutes on 2 cores (measured from a
# clean clone on an Intel Xeon, nothing else running: 810 s, 48 s and 59 s).
# The first pass lists its 15 slowest tests, so that a slow CI names them.
LEGACY_KERAS_TESTS := tests/layers tests/models/test_deeplab.py
ONEDNN_TESTS := tests/layers tests/models/test_deeplab.py tests/training/test_trainer.py
test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests --ignore=tests/bench
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest -n 2 $(LEGACY_KERAS_TESTS)
	flipped=$$($(PY) -c 'from deeplab_dpc.layers import fast_paths; \
	  print(0 if fast_paths.onednn_enabled() else 1)') && \
	  echo "Second pass with TF_ENABLE_ONEDNN_OPTS=$$flipped" && \
	  TF_ENABLE_ONEDNN_OPTS=$$flipped $(PY) -m pytest -n 2 $(ONEDNN_TESTS)

# Benchmarks (not part of the quick start): sets up the peers' own virtual
# environment (TF Model Garden pins TensorFlow 2.20), then runs bench/ and
# writes bench/results.json and bench/results.md. BENCH_FLAGS=--quick for a
# smoke run, BENCH_FLAGS=--only=inference,train_step for a subset.
bench: $(STAMP)
	$(PY) -m pytest -n 2 tests/bench
	PYTHON=$(PYTHON) bash bench/peers/setup.sh
	$(PY) bench/run_all.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
