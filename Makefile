# Entry points. Every target sets up its stack's venv first (idempotent, seconds when done).
# Stacks (scripts/choose_stack.py): classic (TensorFlow 2.15 + Horovod) in .venv where the
# Python is 3.9-3.11, current (TensorFlow 2.21 + tf_keras, tf.distribute) in .venv there, or
# in .venv-current beside classic; STACK=classic|current picks the one `setup`/`demo` use.
HOST_PYTHON ?= python3
VENV := $(or $(word 2,$(shell $(HOST_PYTHON) scripts/choose_stack.py 2>/dev/null)),.venv)
PYTHON := $(VENV)/bin/python
# `make test` runs the suite once per stack, each in its own venv (CI: classic on the
# host's Python 3.11, current on pyenv's 3.13).
STACKS ?= classic current
SHELL_SCRIPTS := $(shell find scripts resnext101-32x4d utils .ci -name '*.sh' -o -name run -path '.ci/*' 2>/dev/null)

.PHONY: setup demo test lint format

setup:
	@./scripts/setup_env.sh

# The main job on built-in data: train ResNeXt101-32x4d with the recipe's settings on the
# sample data (600 real 64x64 images, 10 classes) at 32x32 for 5 epochs, then evaluate.
DEMO_DIR := results/demo
demo: setup
	rm -rf $(DEMO_DIR)
	$(PYTHON) main.py --arch resnext101-32x4d --mode train_and_evaluate \
		--data_dir "$$($(PYTHON) -m utils.tools.sample_data)" --num_classes 10 --image_size 32 \
		--batch_size 16 --num_iter 5 --iter_unit epoch --lr_init 0.1 --lr_warmup_epochs 1 \
		--cosine_lr --label_smoothing 0.1 --momentum 0.875 --weight_init fan_in \
		--weight_decay 6.103515625e-05 --display_every 10 --seed 1 --results_dir $(DEMO_DIR)

# Each stack is tested on the newest Python of its range found (scripts/choose_stack.py
# --find-python: on PATH or installed by pyenv, else the host's; one line says which), in
# its own venv, with its own pytest summary and 15 slowest tests. One stack's failure does
# not skip the other's run; the status is non-zero if any failed.
# Two pytest-xdist workers (one TensorFlow thread each, tests/conftest.py); a file whose
# tests share module fixtures stays on one worker (xdist_group), the rest go test by test.
PYTEST_ARGS ?= -n 2 --dist loadgroup tests
test: setup lint
	@status=0; \
	for stack in $(STACKS); do \
		choice=$$(STACK=$$stack $(HOST_PYTHON) scripts/choose_stack.py --find-python) || { \
			echo "== $$stack stack: no Python for it here; not tested"; continue; }; \
		venv=$$(echo "$$choice" | cut -d' ' -f2); python=$$(echo "$$choice" | cut -d' ' -f3); \
		echo "== $$stack stack ($$venv, $$($$python --version 2>&1)): set-up, then pytest"; \
		if STACK=$$stack PYTHON=$$python VENV=$$venv ./scripts/setup_env.sh; then \
			$$venv/bin/python -m pytest $(PYTEST_ARGS) || status=1; \
		else \
			echo "== $$stack stack: set-up failed"; status=1; \
		fi; \
	done; \
	exit $$status

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
