"""main.py for the multi-process tests: also saves each rank's final variables.

With RNXT_TEST_DUMP=<dir>, every rank writes its model and optimizer variables to
<dir>/rank<N>.npz when training ends, so a test can compare the ranks' weights.
"""

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main  # noqa: E402
from runtime import runner  # noqa: E402

_optimizer_state, _train, _state = runner.optimizer_state, runner._train, {}


def optimizer_state(optimizer):
    _state["variables"] = _optimizer_state(optimizer)
    return _state["variables"]


def train(args, config, dist, logger, seed, benchmark=False):
    model, result = _train(args, config, dist, logger, seed, benchmark)
    directory = os.environ["RNXT_TEST_DUMP"]
    os.makedirs(directory, exist_ok=True)
    variables = model.variables + _state["variables"]
    arrays = {f"{i:04d} {v.name.replace('/', '|')}": v.numpy() for i, v in enumerate(variables)}
    np.savez(os.path.join(directory, f"rank{dist.rank}.npz"), **arrays)
    return model, result


runner.optimizer_state, runner._train = optimizer_state, train

if __name__ == "__main__":
    sys.exit(main.main())
