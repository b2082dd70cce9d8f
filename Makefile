# Entry points. Every target sets up .venv first (idempotent, seconds when done).
PYTHON := .venv/bin/python
SHELL_SCRIPTS := $(shell find scripts resnext101-32x4d utils .ci -name '*.sh' -o -name run -path '.ci/*' 2>/dev/null)

.PHONY: setup demo test lint format

setup:
	@./scripts/setup_env.sh

# The main job on built-in data: a short ResNeXt101-32x4d training benchmark on synthetic
# 64x64 images (replaced by a train_and_evaluate on real sample data once it exists).
demo: setup
	$(PYTHON) main.py --arch resnext101-32x4d --mode training_benchmark --iter_unit batch \
		--num_iter 20 --warmup_steps 5 --batch_size 8 --synthetic_data_size 64 \
		--display_every 5 --results_dir results/demo

test: setup lint
	$(PYTHON) -m pytest tests

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/shellcheck $(SHELL_SCRIPTS)

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .
