# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,vizier]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m deeplab_dpc.demo

# The whole suite under Keras 3, then the model-building tests again under
# tf_keras (TF_USE_LEGACY_KERAS=1), which tensorflow-model-optimization needs.
test: $(STAMP)
	$(PY) -m pytest -n 2 tests
	TF_USE_LEGACY_KERAS=1 $(PY) -m pytest -n 2 tests/layers tests/models

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
