"""The six modes of `main.py` and what each needs: one table for the parser, the runtime
and the per-mode environment."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    trains: bool = False  # updates weights
    evaluates: bool = False  # scores the validation split: needs --data_dir
    benchmark: bool = False  # measures img/s after --warmup_steps steps
    single_process: bool = False  # rank 0 alone runs it under a launcher

    @property
    def frozen_weights(self) -> bool:
        """Weights never change after the first call: oneDNN may cache them."""
        return not self.trains


MODES = {
    "train": Mode(trains=True),
    "train_and_evaluate": Mode(trains=True, evaluates=True),
    "evaluate": Mode(evaluates=True),
    "predict": Mode(single_process=True),
    "training_benchmark": Mode(trains=True, benchmark=True),
    "inference_benchmark": Mode(benchmark=True, single_process=True),
}


def benchmark_too_short(steps: int, warmup_steps: int, mode: str, unit: str = "steps"):
    """Why a benchmark of `steps` steps would measure nothing, or None if it measures."""
    if steps > warmup_steps:
        return None
    return (
        f"--mode {mode} runs {steps} {unit}, not more than --warmup_steps ({warmup_steps}), "
        "which are not measured: raise --num_iter or lower --warmup_steps"
    )
