# Two commands a newcomer needs:  `make demo` (an RL run on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test smollm2 bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # CPU wheel first, so nothing pulls a CUDA build
	$(BIN)/pip install -q -c constraints.txt -e '.[test,agents,lora,ray,games,classic]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/entropo train --overwrite

test: $(STAMP)
	$(BIN)/pytest -q

smollm2: $(STAMP)
	$(BIN)/entropo models pull smollm2-135m-instruct
	$(BIN)/entropo train smollm2_addition --overwrite

clean:
	rm -rf $(VENV) runs
