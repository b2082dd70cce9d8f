# Entry points. Every target sets up .venv first (idempotent, seconds when done).
PYTHON := .venv/bin/python
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

test: setup lint
	$(PYTHON) -m pytest tests

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/shellcheck $(SHELL_SCRIPTS)

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .
