"""Whether this CPU has native bfloat16 instructions (no TensorFlow import).

AVX512_BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) and AMX-BF16 (Intel
Sapphire Rapids and later) let oneDNN run bfloat16 convolutions and matmuls natively; Linux
lists them as the `avx512_bf16` and `amx_bf16` flags in /proc/cpuinfo.
"""

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = CPUINFO) -> set:
    """The CPU's feature flags from the first `flags` line of `cpuinfo`; empty when the file
    is unreadable (not Linux) or has no such line.

    Args:
        cpuinfo: the file to read, /proc/cpuinfo by default.
    """
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_bf16(cpuinfo: str = CPUINFO) -> bool:
    """True when the CPU has native bfloat16 instructions (avx512_bf16 or amx_bf16).

    Args:
        cpuinfo: the file to read, /proc/cpuinfo by default.
    """
    return bool(cpu_flags(cpuinfo) & set(BF16_FLAGS))
