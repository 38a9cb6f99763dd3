# Every pip call goes through constraints.txt, which pins torch so that machines with a local CPU
# wheel use it instead of pulling the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
CODE := src tests benchmarks

.PHONY: install demo test lint format bench clean

# The eval extra (lmms-eval) requires torchvision; the only builds the registry offers next to
# the pinned CPU torch are CUDA builds that fail to import (`operator torchvision::nms does not
# exist`) and then break transformers' image processors, so a torchvision that cannot be
# imported is removed (transformers falls back to its PIL processors).
$(VENV)/.installed-test: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test,eval]'
	$(PY) -c 'import torchvision' 2>/dev/null || $(PY) -m pip uninstall -y -q torchvision
	touch $@

install: $(VENV)/.installed-test

# The demo needs only the package itself (its bundled model ships inside it).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/visprune demo

lint: install
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)

format: install
	$(VENV)/bin/ruff check --fix $(CODE)
	$(VENV)/bin/ruff format $(CODE)

test: lint
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/selection.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
