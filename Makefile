# The two commands of the README. Both create .venv and install facray on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.facray-installed

.PHONY: demo test test-slow test-all bench install clean wheelhouse dist

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision resolve to the wheels on local disk here (see README: Quick start).
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/facray demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# The slow tests: every jobs/*.py --smoke-test in its own process and Ray (CI runs them after `make test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' --durations=15

bench: $(STAMP)
	$(BIN)/python bench/prepare.py
	$(BIN)/python bench/train_binary.py
	$(BIN)/python bench/label.py

# facray's wheel alone, for cluster.yaml's file_mounts (README: On a cluster).
dist: $(STAMP)
	rm -rf dist build
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

# Offline installs (README: On a cluster): facray and its dependencies as wheels for Python $(PY) on
# Linux x86-64, files over 60 MB split; EXCLUDE=torch,torchvision leaves out what the target has;
# pythonX.Y must be on the PATH (or INTERPRETER=/path/to/pythonX.Y): its pip resolves the markers.
PY ?= 3.12
EXCLUDE ?=
INTERPRETER ?=
wheelhouse: $(STAMP)
	$(BIN)/python tools/wheelhouse.py --python $(PY) --out wheelhouse $(if $(EXCLUDE),--exclude $(EXCLUDE)) \
		$(if $(INTERPRETER),--interpreter $(INTERPRETER))

clean:
	rm -rf demo_output .pytest_cache
