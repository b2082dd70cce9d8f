"""--amp's dtype (--amp_dtype): float16 with loss scaling, or bfloat16 without (no TensorFlow).

Default: float16 on a GPU (the original's recipe); on a CPU, bfloat16 where the CPU has
native bfloat16 instructions, else float16 with a warning (CPUs have no fast float16
kernels: slower than float32). bfloat16 has float32's exponent range, so it needs no loss
scaling: --static_loss_scale then has no effect (a warning). Variables, batch-norm
statistics, logits and the loss stay float32 under both.
"""

from typing import List, Optional, Tuple

FLOAT16, BFLOAT16 = "float16", "bfloat16"
AMP_DTYPES = (FLOAT16, BFLOAT16)
BF16_GPU_CAPABILITY = (8, 0)  # Ampere: bfloat16 tensor cores

CPU_FLOAT16 = (
    "warning: --amp with float16 on a CPU: CPUs have no fast float16 convolutions, so this "
    "runs many times slower than float32 ({why})"
)
NO_NATIVE_BF16 = "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16)"


def choose_dtype(
    requested: Optional[str],
    on_gpu: bool,
    cpu_bf16: bool,
    gpu_capability: Optional[Tuple[int, int]] = None,
) -> Tuple[str, List[str]]:
    """The --amp dtype and the warnings (one line each) to print about it.

    Args:
        requested: --amp_dtype as given, or None for the default.
        on_gpu: TensorFlow sees a GPU.
        cpu_bf16: the CPU has native bfloat16 instructions (utils.core.cpu_features).
        gpu_capability: the GPU's CUDA compute capability, when known.
    """
    if on_gpu:
        dtype = requested or FLOAT16
        old = gpu_capability is not None and tuple(gpu_capability) < BF16_GPU_CAPABILITY
        if dtype == BFLOAT16 and old:
            major, minor = gpu_capability
            return dtype, [
                f"warning: --amp_dtype bfloat16 on a GPU of compute capability {major}.{minor}: "
                "bfloat16 tensor cores start with 8.0 (Ampere), so float16 is faster here"
            ]
        return dtype, []
    if requested is None:
        requested = BFLOAT16 if cpu_bf16 else FLOAT16
    if requested == FLOAT16:
        why = (
            "use --amp_dtype bfloat16 on this CPU" if cpu_bf16 else f"drop --amp: {NO_NATIVE_BF16}"
        )
        return FLOAT16, [CPU_FLOAT16.format(why=why)]
    if not cpu_bf16:
        return BFLOAT16, [
            f"warning: --amp_dtype bfloat16: {NO_NATIVE_BF16}, so it is emulated and can be "
            "slower than float32"
        ]
    return BFLOAT16, []


def policy_name(amp: bool, dtype: Optional[str]) -> str:
    """The Keras mixed-precision policy of a run.

    Args:
        amp: --amp.
        dtype: the chosen --amp dtype (choose_dtype).
    """
    return f"mixed_{dtype}" if amp else "float32"


def static_scale_warning(dtype: str, static_loss_scale: float) -> Optional[str]:
    """The one-line warning that --static_loss_scale does nothing under bfloat16, or None.

    Args:
        dtype: the chosen --amp dtype.
        static_loss_scale: --static_loss_scale (-1: dynamic, the default).
    """
    if dtype == BFLOAT16 and static_loss_scale != -1:
        return (
            f"warning: --static_loss_scale {static_loss_scale:g} has no effect with bfloat16, "
            "which needs no loss scaling"
        )
    return None


def loss_scaling(args) -> bool:
    """True when the run scales its loss: --amp with float16.

    Args:
        args: the parsed command line, after environment.configure_precision has set
            `amp_dtype` to the chosen dtype.
    """
    return bool(args.amp) and getattr(args, "amp_dtype", None) in (None, FLOAT16)
