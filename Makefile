# The README's two commands: `make reproduce` (set up, run every notebook on the cpu profile, then
# regenerate the gallery reports/README.md)
# and `make test` (set up, then unit tests + nbval over every notebook on the smoke profile).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
PROFILE ?= cpu
# Optional extra package index for torch, e.g. https://download.pytorch.org/whl/cpu (CPU-only wheels).
TORCH_INDEX ?=
PIP_TORCH := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

# Nothing here may reach a network (the models and data are local).
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup reproduce test unit nbval report fetch clean-smoke

setup: $(STAMP)

# Re-runs only when the pins or the package metadata change, so a second `make setup` takes seconds.
# setuptools >= 77 reads the SPDX `license = "MIT"` of pyproject.toml (the editable install builds
# without isolation, with this environment's setuptools; a fresh venv starts with 3.11's 65.5).
$(STAMP): requirements.txt requirements.lock.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"
	$(PY) -m pip install --quiet $(PIP_TORCH) -r requirements.txt -c requirements.lock.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name invar-rag --display-name "invar-rag (.venv)" >/dev/null
	touch $@

reproduce: setup
	$(VENV)/bin/invar-rag reproduce --profile $(PROFILE)
	$(VENV)/bin/invar-rag report --profile $(PROFILE)

# The raw sources from their public origins into data/sources/ (for a machine without ../shared).
fetch: setup
	$(VENV)/bin/invar-rag data fetch

# Every table and figure, and reports/README.md, from reports/results alone (no model).
report: setup
	$(VENV)/bin/invar-rag report --profile $(PROFILE)

test: unit nbval

unit: setup
	$(PY) -m pytest tests

nbval: setup
	$(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

clean-smoke:
	rm -rf build data/processed/smoke
