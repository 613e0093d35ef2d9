"""Sequence-parallel attention: time, memory and FLOP/s of Ulysses (ours, DeepSpeed's), LSS, ring, two-level.

    .venv/bin/python benchmarks/attention_parallel.py                 # everything (CPU: ~8 min on 2 idle cores)
    .venv/bin/python benchmarks/attention_parallel.py --quick         # seconds: a smoke run of every section
    .venv/bin/python benchmarks/attention_parallel.py --sections time --sizes 4096,8192 --ps 1,2

Sections (each prints a table and the ratios measured in this run):
  time    forward+backward of one transformer block and of the whole ForecastViT, against P and
          N, for every method; ratio DeepSpeed / ours (goal: >= 1, ours no slower)
  memory  the longest sequence whose training step (forward+backward of the whole model) fits
          a per-rank memory budget, for each P (goal: grows in proportion to P)
  flops   achieved FLOP/s of one block (P = 1) as a fraction of the matmul peak measured in
          turns with it (2048^2 matmuls; goal on CPU: above 50% at 4K tokens and more)
  overlap ring attention's forward+backward against its arithmetic alone (the K/V shifts made
          local copies) and its shifts alone: the share of the shorter one hidden by the other
          (1: full overlap, 0: none), i.e. whether the backend progresses isend/irecv while the
          rank computes

The two-level methods (ulysses-lss, ulysses-ring) run with --sp-inner (default 2) where it
divides P (and is less) and the heads; elsewhere they are left out.

The same script runs unchanged on GPUs (CUDA or ROCm): one process per GPU with NCCL/RCCL, memory
from torch.cuda.max_memory_allocated, the peak from a bf16 (--dtype) matmul; P is limited to the
GPUs present. Methods are timed in turns (A B C A B C ...), so the ratios between them hold
on a shared machine; comparisons across P are separate runs: read the load averages printed.
On CPU the P processes share the machine's cores (--threads per process, default
cores / P), processes talk over gloo, and memory is the rise of the resident set during a step
(VmHWM after resetting it, with glibc returning freed blocks: MALLOC_MMAP_THRESHOLD_).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqvit.model.vit import Block, ForecastViT  # noqa: E402
from seqvit.parallel.methods import sequence_parallel_attention  # noqa: E402
from seqvit.parallel.spawn import spawn  # noqa: E402

METHODS = ("ulysses", "deepspeed-ulysses", "lss", "ring", "ulysses-lss", "ulysses-ring")
TWO_LEVEL = ("ulysses-lss", "ulysses-ring")
CHANNELS, COLS = 4, 64  # whole-model runs: 4 channels, patch size 1, a grid of N/64 x 64 patches


# --- device, timing, memory -------------------------------------------------------------------


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"{key}:\s+(\d+)", handle.read()).group(1))


class StepMemory:
    """Bytes a step adds to this rank: GPU allocator peak, or CPU resident-set peak."""

    def __init__(self, device):
        self.device = device
        self.base = 0

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = _status_kb("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # VmHWM := VmRSS

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _status_kb("VmHWM") * 1024 - self.base


def _max_over_ranks(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    buf = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return float(buf)


def _time(steps: dict, device, iters: int) -> dict:
    """Median seconds of each step() over iters (after one warm-up each), the slowest rank's.

    The steps run round-robin (A B C A B C ...), so a change of background load hits every
    method alike and the ratios between them stay fair.
    """
    times = {name: [] for name in steps}
    for i in range(iters + 1):
        for name, step in steps.items():
            if dist.get_world_size() > 1:
                dist.barrier()
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: _max_over_ranks(statistics.median(values)) for name, values in times.items()}


# --- workloads ----------------------------------------------------------------------------------


def _backend(method: str, p: int, n: int, heads: int, kernel: str, sp_inner: int = 1):
    if p == 1:
        return kernel
    inner = sp_inner if method in TWO_LEVEL else 1
    return sequence_parallel_attention(method, None, n, heads, kernel=kernel, sp_inner=inner)


def _block_step(args, method, p, n, device, dtype):
    torch.manual_seed(0)
    backend = _backend(method, p, n, args.heads, args.kernel, args.sp_inner)
    block = Block(args.dim, args.heads, args.mlp_ratio, 0.0, backend)
    block = block.to(device, dtype)
    x = torch.randn(args.batch, n // p, args.dim, device=device, dtype=dtype, requires_grad=True)

    def step():
        block(x).float().square().mean().backward()

    return step


def _model_step(args, method, p, n, device, dtype, rank):
    torch.manual_seed(0)
    grid = (n // COLS, COLS)
    model = ForecastViT(
        CHANNELS,
        1,
        grid,
        embed_dim=args.dim,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        attention_backend=_backend(method, p, n, args.heads, args.kernel, args.sp_inner),
    ).to(device, dtype)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    local = n // p
    tokens = torch.randn(args.batch, CHANNELS, local, 1, device=device, dtype=dtype)
    lead = torch.full((args.batch,), 24.0, device=device)
    offset = rank * local

    def step():
        model(tokens, lead, token_offset=offset).float().square().mean().backward()

    return step


def block_flops(batch: int, n: int, dim: int, mlp_ratio: float) -> float:
    """Model FLOPs of one block, forward + backward (= 3 x forward; recomputation not counted)."""
    linear = 2 * n * dim * (3 * dim + dim + 2 * int(dim * mlp_ratio))  # qkv, proj, two MLP layers
    attention = 4 * n * n * dim  # q k^T and weights v
    return 3.0 * batch * (linear + attention)


def matmul_step(device, dtype, size: int = 2048):
    """(step, flops): three square matmuls, the machine's practical peak for this process."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def step():
        for _ in range(3):
            a @ b

    return step, 3 * 2 * size**3


# --- one world of P processes -------------------------------------------------------------------


def _methods(p: int, names, args=None) -> list[str]:
    if p == 1:
        return ["single"]
    inner = getattr(args, "sp_inner", 2)
    fits = 1 < inner < p and p % inner == 0 and args is not None and args.heads % inner == 0
    return [m for m in names if m not in TWO_LEVEL or fits]


def _overlap(args, p, n, device, dtype, rank) -> dict:
    """Ring forward+backward, its arithmetic alone and its shifts alone (module docstring: overlap)."""
    from seqvit.parallel import ring

    torch.manual_seed(0)
    local, dim = n // p, args.dim // args.heads
    q, k, v = (
        torch.randn(args.batch, local, args.heads, dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    valid = [local] * p

    def whole():
        ring.ring_attention(q, k, v, None, valid).float().sum().backward()

    shift = ring._Ring.shift

    def local_copy(self, send, recv, tag, phase):
        recv.copy_(send)
        return []

    def arithmetic():
        ring._Ring.shift = local_copy
        try:
            whole()
        finally:
            ring._Ring.shift = shift

    kv = torch.stack((k, v)).detach()
    dkv = kv.float()
    links = ring._Ring(None, "overlap")

    def shifts():  # the forward's P-1 K/V shifts and the backward's P-1 K/V and P-1 dK/dV ones
        for buffer, rounds in ((kv, 2 * (p - 1)), (dkv, p - 1)):
            for _ in range(rounds):
                ring._wait(links.shift(buffer, torch.empty_like(buffer), 0, "forward"))

    seconds = _time({"ring": whole, "arithmetic": arithmetic, "shifts": shifts}, device, args.iters)
    both, compute, comm = seconds["ring"], seconds["arithmetic"], seconds["shifts"]
    hidden = (compute + comm - both) / min(compute, comm)
    if rank == 0:
        print(
            f"  overlap P={p} N={n:6d} ring {both * 1e3:.1f} ms, arithmetic {compute * 1e3:.1f} ms, shifts "
            f"{comm * 1e3:.1f} ms: hidden share {hidden:.2f}",
            flush=True,
        )
    return {"p": p, "n": n, "ring": both, "arithmetic": compute, "shifts": comm, "hidden": hidden}


def _worker(rank: int, world: int, args) -> dict:
    device = _device(rank)
    dtype = getattr(torch, args.dtype)
    out = {"time": [], "memory": [], "flops": [], "overlap": []}
    p = world
    if "time" in args.sections:
        for n in args.sizes:
            for what, make in (("block", _block_step), ("model", _model_step)):
                if what == "model" and n % (COLS * p):
                    continue
                extra = (rank,) if what == "model" else ()
                steps = {
                    method: make(args, method, p, n, device, dtype, *extra)
                    for method in _methods(p, args.methods, args)
                }
                for method, seconds in _time(steps, device, args.iters).items():
                    out["time"].append({"what": what, "p": p, "n": n, "method": method, "seconds": seconds})
                    if rank == 0:
                        print(f"  time {what:5s} P={p} N={n:6d} {method:17s} {seconds * 1e3:9.1f} ms", flush=True)
                del steps
    if "overlap" in args.sections and p > 1:
        for n in args.sizes:
            out["overlap"].append(_overlap(args, p, n, device, dtype, rank))
    if "memory" in args.sections:
        for method in _methods(p, args.memory_methods, args):
            out["memory"].append(_longest(args, method, p, device, dtype, rank))
    if "flops" in args.sections and p == 1:
        matmul, matmul_flops = matmul_step(device, dtype)
        for n in args.flop_sizes:
            # matmul and block alternate, so both see the same machine (a shared one included)
            seconds = _time(
                {"matmul": matmul, "block": _block_step(args, "single", 1, n, device, dtype)}, device, args.iters
            )
            peak = matmul_flops / seconds["matmul"]
            flops = block_flops(args.batch, n, args.dim, args.mlp_ratio)
            out["flops"].append({"n": n, "seconds": seconds["block"], "flops": flops / seconds["block"], "peak": peak})
            if rank == 0:
                rate = flops / seconds["block"]
                print(f"  flops N={n:6d} {rate / 1e9:7.1f} GFLOP/s of {peak / 1e9:.1f} peak", flush=True)
    return out


def _step_memory(args, method, p, n, device, dtype, rank) -> int:
    step = _model_step(args, method, p, n, device, dtype, rank)
    meter = StepMemory(device)
    meter.start()
    step()
    used = _max_over_ranks(meter.peak())
    del step
    return int(used)


def _longest(args, method, p, device, dtype, rank) -> dict:
    """Longest N (multiple of the search grain) whose step fits the per-rank budget: doubling, then bisection."""
    budget = args.budget_mb * 2**20
    grain = COLS * 4  # N/64 rows, a multiple of 4 so P in {1, 2, 4} divides it
    good, bad, trials = 0, None, []
    n = args.memory_start
    while bad is None and n <= args.memory_max:
        used = _step_memory(args, method, p, n, device, dtype, rank)
        trials.append((n, used))
        if used <= budget:
            good, n = n, 2 * n
        else:
            bad = n
    for _ in range(args.bisect if bad else 0):
        mid = (good + bad) // 2 // grain * grain
        if mid in (good, bad):
            break
        used = _step_memory(args, method, p, mid, device, dtype, rank)
        trials.append((mid, used))
        good, bad = (mid, bad) if used <= budget else (good, mid)
    if rank == 0:
        shown = ", ".join(f"{t}:{u / 2**20:.0f}MB" for t, u in trials)
        print(f"  memory P={p} {method:17s} longest {good} (trials {shown})", flush=True)
    per_token = dict(trials).get(good, 0) / max(good, 1)  # bytes per token of the global sequence
    return {"p": p, "method": method, "longest": good, "first_over": bad, "trials": trials, "per_token": per_token}


# --- report -------------------------------------------------------------------------------------


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict, args) -> str:
    parts = []
    times = [r for rs in results.values() for r in rs["time"]]
    for what in ("block", "model"):
        rows = []
        for n in args.sizes:
            base = next((r["seconds"] for r in times if r["what"] == what and r["n"] == n and r["p"] == 1), None)
            for p in args.ps:
                cell = {r["method"]: r["seconds"] for r in times if r["what"] == what and r["n"] == n and r["p"] == p}
                if not cell:
                    continue
                for method, seconds in cell.items():
                    ours = cell.get("ulysses")
                    ds = cell.get("deepspeed-ulysses")
                    ratio = f"{ds / ours:.2f}" if method == "ulysses" and ours and ds else ""
                    speedup = f"{base / seconds:.2f}" if base else ""
                    rows.append([n, p, method, f"{seconds * 1e3:.1f}", speedup, ratio])
        if rows:
            parts.append(
                f"### Forward+backward, {'one transformer block' if what == 'block' else f'whole model (depth {args.depth})'}"
                f" (dim {args.dim}, {args.heads} heads, batch {args.batch}, {args.dtype})\n\n"
                + _table(["N", "P", "method", "ms", "speed-up vs P=1", "DeepSpeed / ours"], rows)
            )
    memory = [r for rs in results.values() for r in rs["memory"]]
    if memory:
        base = {r["method"]: r["longest"] for r in memory if r["p"] == 1}
        single = base.get("single")
        per_token = next((r["per_token"] for r in memory if r["p"] == 1), None)
        rows = [
            [
                r["p"],
                r["method"],
                r["longest"],
                r["first_over"] or f"> {args.memory_max}",
                f"{r['longest'] / single:.2f}" if single else "",
                f"{r['per_token'] / 1024:.1f}",
                f"{per_token / r['per_token']:.2f}" if per_token and r["per_token"] else "",
                r["p"],
            ]
            for r in memory
        ]
        parts.append(
            f"### Longest sequence whose training step fits {args.budget_mb} MB per rank "
            f"(whole model, depth {args.depth}, dim {args.dim})\n\n"
            + _table(
                [
                    "P",
                    "method",
                    "longest N",
                    "first N over",
                    "ratio to P=1",
                    "KB per token (at longest N)",
                    "tokens per byte vs P=1",
                    "goal (= P)",
                ],
                rows,
            )
        )
    overlap = [r for rs in results.values() for r in rs.get("overlap", [])]
    if overlap:
        rows = [
            [r["n"], r["p"], f"{r['ring'] * 1e3:.1f}", f"{r['arithmetic'] * 1e3:.1f}", f"{r['shifts'] * 1e3:.1f}"]
            + [f"{r['hidden']:.2f}"]
            for r in overlap
        ]
        parts.append(
            f"### Ring attention: does the backend overlap its shifts with the arithmetic? ({args.dtype})\n\n"
            + _table(["N", "P", "ring ms", "arithmetic alone ms", "shifts alone ms", "hidden share (1 = full)"], rows)
        )
    flops = [r for rs in results.values() for r in rs["flops"]]
    if flops:
        rows = [
            [
                r["n"],
                f"{r['seconds'] * 1e3:.1f}",
                f"{r['flops'] / 1e9:.1f}",
                f"{r['peak'] / 1e9:.1f}",
                f"{100 * r['flops'] / r['peak']:.0f}%",
            ]
            for r in flops
        ]
        parts.append(
            f"### Achieved FLOP/s of one block (P=1, forward+backward model FLOPs, kernel {args.kernel})\n\n"
            + _table(["N", "ms", "GFLOP/s", "matmul peak GFLOP/s", "fraction of peak"], rows)
        )
    return "\n\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="time,memory,flops,overlap")
    parser.add_argument("--ps", default="1,2,4", help="sequence-parallel degrees (one world of P processes each)")
    parser.add_argument("--sizes", default="2048,4096,8192", help="sequence lengths N for the time section")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--memory-methods", default="ulysses,lss,ring")
    parser.add_argument("--sp-inner", type=int, default=2, help="inner degree of the two-level methods")
    parser.add_argument("--flop-sizes", default="1024,4096,8192")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--mlp-ratio", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--kernel", default="sdpa", help="local attention kernel: sdpa, math, flash, auto")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--budget-mb", type=int, default=None, help="per-rank budget (CPU default 256, GPU 4096)")
    parser.add_argument("--memory-start", type=int, default=1024)
    parser.add_argument("--memory-max", type=int, default=262144)
    parser.add_argument("--bisect", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="threads per process (CPU default: cores / P)")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every section runs")
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available()
    args.sections = args.sections.split(",")
    args.ps = [int(p) for p in args.ps.split(",")]
    args.sizes = [int(n) for n in args.sizes.split(",")]
    args.flop_sizes = [int(n) for n in args.flop_sizes.split(",")]
    args.methods = args.methods.split(",")
    args.memory_methods = args.memory_methods.split(",")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.budget_mb = args.budget_mb or (4096 if gpu else 256)
    if args.quick:
        args.sizes, args.flop_sizes, args.iters = [512], [512], 1
        args.dim, args.heads, args.budget_mb, args.memory_start, args.bisect = 64, 4, 24, 256, 0
    if gpu:
        usable = [p for p in args.ps if p <= torch.cuda.device_count()]
        if usable != args.ps:
            print(f"only {torch.cuda.device_count()} GPUs: P limited to {usable}")
        args.ps = usable
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # freed blocks go back to the OS: RSS = live memory
    cores = os.cpu_count() or 1
    print(
        f"device {'cuda x ' + str(torch.cuda.device_count()) if gpu else f'cpu ({cores} cores)'}, torch "
        f"{torch.__version__}, dtype {args.dtype}, kernel {args.kernel}, P in {args.ps}",
        flush=True,
    )
    results = {}
    for p in args.ps:
        threads = args.threads or max(1, cores // p)
        started = time.perf_counter()
        values = spawn(_worker, p, args, backend="nccl" if gpu else "gloo", threads=threads, timeout_s=3600)
        results[p] = values[0]
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"P={p}: {time.perf_counter() - started:.0f} s ({threads} threads per process; load average {load})",
            flush=True,
        )
    text = report(results, args)
    print()
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
