"""The process group of a run: set-up with bounded waits, and the few collectives the trainer makes.

Every wait is bounded (`dist_timeout`), so a missing or dead rank ends the run with an error instead of hanging it.
Without a launcher (`python -m ssd_ds.train`) the process is a world of one with the rendezvous variables a
launcher would set; on a machine without CUDA DeepSpeed's CPU accelerator and the gloo backend are used.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def setup_process_env() -> None:
    """Single-process runs get the rendezvous variables the launcher would set; CPU-only machines use DeepSpeed's
    CPU accelerator (it must be chosen before deepspeed is imported)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # JIT-built ops (DeepSpeed's CPU shared-memory collective) in a directory of this environment's own: torch before
    # 2.14 guards the build with a lock *file*, and one left by a killed build, or by another torch version sharing
    # ~/.cache/torch_extensions, blocks every later start in FileBaton.wait, before any of the trainer's timeouts.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    # And built by this environment's ninja (pip's, a dependency of DeepSpeed) whatever PATH says: ninja versions log
    # their build commands differently, so alternating between the system's and the environment's rebuilds the op
    # from scratch (a minute of CPU) at every switch.
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "ninja").exists() and not os.environ.get("PATH", "").startswith(f"{bin_dir}{os.pathsep}"):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` seconds, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def wait_for_rendezvous(addr: str, port: int, timeout: float, rank: int) -> None:
    """Ranks other than 0: wait (bounded) until the master's rendezvous port accepts connections."""
    deadline = time.monotonic() + timeout
    why = None
    while time.monotonic() < deadline:
        why = reachable(addr, port, timeout=min(2.0, timeout))
        if why is None:
            return
        time.sleep(0.5)
    raise RuntimeError(f"rank {rank}: the rendezvous at {addr}:{port} did not answer within {timeout:g} s ({why}); "
                       f"check --master_addr / MASTER_ADDR and that node 0 was launched")


def check_local_rank(local_rank: int) -> None:
    """A node asked to run more ranks than it has GPUs fails here, not inside NCCL."""
    if torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"local rank {local_rank} but this node has {torch.cuda.device_count()} GPUs: the "
                           f"hostfile's slots for this host (or --num_gpus) exceed its GPUs")


def init_distributed(timeout: float) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) after DeepSpeed's init_distributed (NCCL on CUDA, else gloo)."""
    import deepspeed  # after setup_process_env: DS_ACCELERATOR is read at import

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    check_local_rank(local_rank)
    rank = int(os.environ["RANK"])
    if rank != 0:
        wait_for_rendezvous(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout, rank)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               timeout=timedelta(seconds=timeout))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)
    unlink_shm_buffer(dist.get_rank(), dist.get_world_size())
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


SHM_DIR = Path("/dev/shm")


def shm_buffer_name(rank: int) -> str:
    """The name DeepSpeed's CPU collective (its deepspeed_shm_comm op) gives rank `rank`'s buffer in shared memory."""
    return (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def unlink_shm_buffer(rank: int, world: int) -> None:
    """Remove this rank's name of DeepSpeed's shared-memory buffer, which DeepSpeed never removes: every multi-rank
    CPU run left a 69 MB file per rank in /dev/shm (memory, not disk) until the machine restarted. The buffers are
    made and mapped by every rank inside init_distributed (each rank waits there until it has mapped all the
    others'), so after a barrier no rank opens one by name again; the mappings live on until the processes exit.
    (DeepSpeed makes them only when its launcher says all ranks are on this node, one rank included.)"""
    if world > 1:
        dist.barrier()
    (SHM_DIR / shm_buffer_name(rank)).unlink(missing_ok=True)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_from_rank0(obj):
    """Rank 0's `obj` on every rank (a rank-0 decision that every rank must follow)."""
    if _world() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def agree(rank0_flag: bool, any_flag: bool, device: torch.device) -> tuple[bool, bool]:
    """(rank 0's `rank0_flag`, whether any rank's `any_flag` is set), the same on every rank, from one all-reduce
    (max) of two numbers: cheap enough to make every few steps (BENCHMARKS.md). The loop's sync point: rank 0's
    "target reached" and every rank's "asked to stop" (ssd_ds.preemption)."""
    if _world() == 1:
        return rank0_flag, any_flag
    value = torch.tensor([float(rank0_flag and dist.get_rank() == 0), float(any_flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    first, second = value.tolist()
    return first > 0, second > 0


def gather_to_rank0(local):
    """Every rank's `local` object as a list on rank 0 (None elsewhere); `[local]` in a world of one."""
    if _world() == 1:
        return [local]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return gathered if dist.get_rank() == 0 else None


def barrier() -> None:
    if _world() > 1:
        dist.barrier()


def parameter_checksums(module: torch.nn.Module, device: torch.device) -> list[float]:
    """Every rank's sum of all parameters (float64), gathered on every rank. Data parallelism must leave them
    equal; `verify_replicas` raises when they are not."""
    with torch.no_grad():
        local = torch.stack([p.double().sum() for p in module.parameters()]).sum().reshape(1).to(device)
    sums = [local] if _world() == 1 else [torch.zeros_like(local) for _ in range(_world())]
    if _world() > 1:
        dist.all_gather(sums, local)
    return [float(s) for s in sums]


def verify_replicas(checksums: list[float]) -> None:
    if len(set(checksums)) != 1:
        raise RuntimeError(f"parameters differ across ranks after training: checksums {checksums}")
