# The README's two commands: `make demo` and `make test`. Each creates or updates .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two installs in one .venv: the light one (inference, no PyTorch) for the demo, and the full one
# (the [train] extra and the test tools) for the tests. The full one includes the light one.
LIGHT := $(VENV)/.installed-light
FULL := $(VENV)/.installed-full
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-all lint bench install clean

$(LIGHT): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --compile -e .
	touch $(LIGHT)

$(FULL): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --compile -e '.[dev,train]'
	touch $(LIGHT) $(FULL)

install: $(FULL)

# ob-infer with no options: the embedded Nairobi sample (geo/sample/) and the default model
# (models/default/, its ONNX export), written to a fresh ob-output-<timestamp>/ folder; it prints
# where. The light install is enough: no PyTorch.
demo: $(LIGHT)
	$(BIN)/ob-infer --map

test: $(FULL)
	$(BIN)/python -m pytest -q

test-all: $(FULL)
	$(BIN)/python -m pytest -q -m ''

lint: $(FULL)
	$(BIN)/ruff check open_buildings tests bench
	$(BIN)/ruff format --check open_buildings tests bench

bench: $(FULL)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
