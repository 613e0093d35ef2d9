"""Run a function on W local processes joined by torch.distributed (tests and benchmarks).

spawn(fn, W, *args) starts W processes (multiprocessing 'spawn'), initializes the default
process group in each (gloo on CPU by default) and returns [fn(rank, W, *args) for each rank].
A failure in any rank stops all of them and raises with that rank's traceback, instead of
leaving the others waiting in a collective.
"""

from __future__ import annotations

import datetime
import os
import queue as queue_module
import socket
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, backend, threads, fn, args, results):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
        value = fn(rank, world, *args)
        dist.barrier()
        results.put((rank, value, None))
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        results.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world: int, *args, backend: str = "gloo", threads: int = 1, timeout_s: float = 600.0) -> list:
    """[fn(rank, world, *args) for rank in range(world)], each run in its own process."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world, port, backend, threads, fn, args, results), daemon=True)
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    values: dict[int, object] = {}  # rank -> what fn returned there
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < world:
            try:
                rank, value, error = results.get(timeout=1.0)
            except queue_module.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker process died with exit code {dead[0]} before reporting") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not finish in {timeout_s} s") from None
                continue
            if error is not None:
                raise RuntimeError(f"rank {rank} of {world} failed:\n{error}")
            values[rank] = value
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    return [values[rank] for rank in range(world)]
