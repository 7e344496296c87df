# The README's two commands: `make demo` and `make test`. Each creates or updates .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-all lint bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --compile -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

SAMPLE := geo/sample

# Until ob-infer lands (issue #6) the demo shows what the geospatial core does with the sample:
# the region is validated, covered by tiles, and every tile is read from the STAC imagery.
demo: $(STAMP)
	$(BIN)/ob-tiles $(SAMPLE)/region.geojson --imagery $(SAMPLE)/items.json
	@echo "Footprints: ob-infer is coming with the inference issue (#6); no footprint files are written yet."

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check open_buildings tests bench
	$(BIN)/ruff format --check open_buildings tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
