# Entry points. Every target sets up its stack's venv first (idempotent, seconds when done).
# Stacks (scripts/choose_stack.py): classic (TensorFlow 2.15 + Horovod) in .venv where the
# Python is 3.9-3.11, current (TensorFlow 2.21 + tf_keras, tf.distribute) in .venv there, or
# in .venv-current beside classic; STACK=classic|current picks the one `setup`/`demo` use.
HOST_PYTHON ?= python3
VENV := $(or $(word 2,$(shell $(HOST_PYTHON) scripts/choose_stack.py 2>/dev/null)),.venv)
PYTHON := $(VENV)/bin/python
# `make test` runs the suite once per stack that runs on this Python, each in its own venv
# with its own pytest summary (CI: both on Python 3.10/3.11, about 15 min each).
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

# One stack's failure does not skip the other's run; the status is non-zero if any failed.
test: setup lint
	@status=0; \
	for stack in $(STACKS); do \
		venv=$$(STACK=$$stack $(HOST_PYTHON) scripts/choose_stack.py 2>/dev/null | cut -d' ' -f2); \
		if [ -z "$$venv" ]; then \
			echo "== $$stack stack: does not run on this Python; not tested"; continue; \
		fi; \
		echo "== $$stack stack ($$venv): set-up, then pytest"; \
		if STACK=$$stack VENV= ./scripts/setup_env.sh; then \
			$$venv/bin/python -m pytest tests || status=1; \
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
