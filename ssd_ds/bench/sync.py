"""The loop's sync point on several ranks: the one all-reduce that carries rank 0's "target reached" and every rank's
stop request (ssd_ds.distributed.agree), against the broadcast of rank 0's flag alone it replaced, and against
nothing. Ranks are processes on this machine (gloo on CPU; NCCL when CUDA is there).

`python -m ssd_ds.bench sync [--ranks 2] [--calls 2000]`: microseconds per call of each, and their ratio.
"""

from __future__ import annotations

import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HELP = "cost of the loop's sync point (agreement on the target and on a stop signal) on several ranks"


def add_arguments(parser) -> None:
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)


def _rank(rank: int, world: int, calls: int, port: int, out) -> None:
    from ssd_ds.distributed import agree

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")

    def broadcast():  # what the sync point did before: rank 0's flag only
        value = torch.tensor([0.0], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    timings = {}
    for name, call in (("broadcast of rank 0's flag", broadcast), ("agree (all-reduce of two flags)",
                                                                   lambda: agree(False, False, device))):
        for _ in range(50):
            call()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        timings[name] = (time.perf_counter() - t0) / calls * 1e6
    if rank == 0:
        out.put(timings)
    dist.destroy_process_group()


def run(args) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_rank, args=(args.ranks, args.calls, port, out), nprocs=args.ranks, start_method="spawn")
    timings = out.get()
    base = timings["broadcast of rank 0's flag"]
    for name, us in timings.items():
        print(f"{name}: {us:.1f} us per call (x{us / base:.2f})")
