"""What a launcher (mpiexec, horovodrun, srun) or a TF_CONFIG says about this process,
read from the environment without importing TensorFlow or Horovod, so the command-line
parser can use it.

Open MPI, horovodrun (Gloo), MPICH/Intel MPI (PMI) and PMIx (also Slurm's `srun --mpi=pmi2`
or `pmix`) announce the world size and this process's rank in these variables; TF_CONFIG
(Kubernetes, TFJob) lists the workers and this task's index. Slurm's own SLURM_NTASKS is
not read: a batch script's single `python` sees it too.
"""

import json
import os

_WORLD_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMI_SIZE", "PMIX_SIZE")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMI_RANK", "PMIX_RANK")


def _env_int(names, default):
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def _tf_config():
    """(workers, index) of a TF_CONFIG naming several tasks, else None."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", ""))
        cluster, task = config["cluster"], config["task"]
        size = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        offset = len(cluster.get("chief", [])) if task.get("type") == "worker" else 0
        return (size, offset + int(task.get("index", 0))) if size > 1 else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def launched_world_size():
    tf_config = _tf_config()
    return tf_config[0] if tf_config else _env_int(_WORLD_SIZE_VARS, 1)


def launched_rank():
    tf_config = _tf_config()
    return tf_config[1] if tf_config else _env_int(_RANK_VARS, 0)
