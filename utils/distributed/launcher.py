"""What a launcher (mpiexec, horovodrun, srun) says about this process, read from the
environment without importing TensorFlow or Horovod, so the command-line parser can use it.

Open MPI, horovodrun (Gloo), MPICH/Intel MPI (PMI), PMIx and Slurm's srun announce the
world size and this process's rank in these variables.
"""

import os

_WORLD_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMI_SIZE", "PMIX_SIZE")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMI_RANK", "PMIX_RANK")


def _env_int(names, default):
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def launched_world_size():
    return _env_int(_WORLD_SIZE_VARS, 1)


def launched_rank():
    return _env_int(_RANK_VARS, 0)
