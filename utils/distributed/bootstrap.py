"""Which multi-process engine runs (`choose_backend`), and for tf.distribute where each
process is: rank, world and its peers' addresses (TF_CONFIG). A TF_CONFIG the user set is
used as it is. Otherwise, under a launcher (mpiexec; srun with an MPI that speaks PMI),
each rank picks a free port on the address the job needs (loopback when all ranks share
one host, else this host's address on the job's network, or RNXT_DIST_ADDRESS) and the
ranks exchange host:port with mpi4py allgathers. Imports neither TensorFlow nor mpi4py at
module level: TF_CONFIG must exist before TensorFlow starts, and mpi4py starts MPI.
"""

import dataclasses
import importlib.util
import json
import os
import socket
from typing import Callable, List, Optional, Sequence

from utils.core.errors import UserError

ADDRESS_VAR = "RNXT_DIST_ADDRESS"
BACKEND_VAR = "RNXT_DIST_BACKEND"
BACKENDS = ("horovod", "tfdist")
_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


@dataclasses.dataclass
class Cluster:
    """This process's place in the job, and the TF_CONFIG that tells TensorFlow."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    workers: List[str]
    reserved: Optional[socket.socket] = None  # holds this rank's port until TF binds it

    def tf_config(self) -> str:
        return json.dumps(
            {"cluster": {"worker": self.workers}, "task": {"type": "worker", "index": self.rank}}
        )

    def release(self) -> None:
        """Lets go of the reserved port (just before TensorFlow's server binds it)."""
        if self.reserved is not None:
            self.reserved.close()
            self.reserved = None


def _env_int(names: Sequence[str]) -> Optional[int]:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def from_tf_config(text: str) -> Cluster:
    """The Cluster a user-set TF_CONFIG describes (workers, optionally a chief first).

    Args:
        text: the TF_CONFIG value (JSON with "cluster" and "task").
    """
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
        offset = len(cluster.get("chief", [])) if task["type"] == "worker" else 0
        if task["type"] not in ("worker", "chief") or set(cluster) - {"chief", "worker"}:
            raise ValueError("only 'chief' and 'worker' tasks are supported")
        rank = offset + int(task["index"])
        if not 0 <= rank < len(workers):
            raise ValueError(f"task index {task['index']} is not in the cluster")
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG is not a usable cluster description: {error}") from None
    hosts = [address.rsplit(":", 1)[0] for address in workers]
    local_rank = _env_int(_LOCAL_RANK_VARS)
    if local_rank is None:
        local_rank = hosts[:rank].count(hosts[rank])
    return Cluster(rank, len(workers), local_rank, hosts.count(hosts[rank]), workers)


def reserve_port(address: str) -> socket.socket:
    """A socket bound to a free port of `address`, not listening: it holds the port during
    the exchange; release it just before TensorFlow's server binds the port.

    Args:
        address: the IPv4 or IPv6 address the port is for.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((address, 0))
    return sock


def job_address(hostnames: Sequence[str], hostname: str) -> str:
    """The address this rank's server is reached at: loopback on a one-host job, else
    RNXT_DIST_ADDRESS or the first non-loopback address `hostname` resolves to.

    TensorFlow's gRPC server itself has no bind-address setting: it listens on every
    interface ([::]:port, seen with `ss -ltn` on TF 2.21) whatever TF_CONFIG says. This
    address only decides where the peers connect; a firewall must keep the port private.

    Args:
        hostnames: every rank's host name.
        hostname: this rank's host name.
    """
    if len(set(hostnames)) == 1:
        return "127.0.0.1"
    if os.environ.get(ADDRESS_VAR):
        return os.environ[ADDRESS_VAR]
    try:
        infos = socket.getaddrinfo(hostname, None, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    for info in infos:
        address = info[4][0]
        if not address.startswith("127.") and address != "::1":
            return address
    raise UserError(
        f"cannot tell this host's address on the job's network ({hostname} resolves to no "
        f"non-loopback address); set {ADDRESS_VAR} to it"
    )


def _format(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def exchange(allgather: Callable[[object], list], rank: int, size: int, local: tuple) -> Cluster:
    """Builds the Cluster from an allgather over the launched ranks (two rounds: host names,
    then host:port).

    Args:
        allgather: a collective that returns every rank's object, in rank order.
        rank: this rank.
        size: the number of ranks.
        local: (local_rank, local_size) on this host.
    """
    hostname = socket.gethostname()
    hostnames = allgather(hostname)
    address = job_address(hostnames, hostname)
    reserved = reserve_port(address)
    workers = allgather(_format(address, reserved.getsockname()[1]))
    return Cluster(rank, size, local[0], local[1], list(workers), reserved)


def from_mpi() -> Cluster:
    """The Cluster of a job an MPI launcher started (rank and world from MPI itself)."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise UserError(
            f"this run was started by a launcher, but mpi4py cannot be imported ({error}); "
            "install mpi4py or set TF_CONFIG"
        ) from None
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local = (node.Get_rank(), node.Get_size())
    node.Free()
    return exchange(world.allgather, world.Get_rank(), world.Get_size(), local)


def discover() -> Cluster:
    """This process's Cluster; sets TF_CONFIG when it was not set (not yet read by TF)."""
    if os.environ.get("TF_CONFIG"):
        return from_tf_config(os.environ["TF_CONFIG"])
    cluster = from_mpi()
    os.environ["TF_CONFIG"] = cluster.tf_config()
    return cluster


def choose_backend(horovod_importable: Optional[bool] = None) -> str:
    """ "horovod" or "tfdist": RNXT_DIST_BACKEND if set, else Horovod where it is installed.

    Args:
        horovod_importable: whether Horovod is installed (default: look, without importing
            it, so TensorFlow does not start before TF_CONFIG is set).
    """
    forced = os.environ.get(BACKEND_VAR, "")
    if forced:
        if forced not in BACKENDS:
            raise UserError(f"{BACKEND_VAR}={forced!r}: choose {' or '.join(BACKENDS)}")
        return forced
    if horovod_importable is None:
        horovod_importable = importlib.util.find_spec("horovod") is not None
    return "horovod" if horovod_importable else "tfdist"
