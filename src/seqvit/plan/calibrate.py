"""Measure this machine for the planner: `seqvit plan --calibrate [--machine NAME or PATH]`.

A CPU machine file (config/machines/cpu-local.yaml) describes one core per rank: training on CPU
runs one process per rank with train.threads threads, and the planner scales the one-core rates
below by the cores a rank gets (machine.Machine.compute_share). Measured here, on one thread:

  peak_tflops            square matmuls, fp32 and bf16 (seqvit.train.throughput times them)
  attention_tflops       the local attention kernel training runs (model.attention sdpa: torch's
                         scaled_dot_product_attention, as model/attention.py calls it), forward and
                         backward, in model FLOPs (3 x 4 N^2 d per head) per second
  elementwise_gbs        one training step of a small ForecastViT under torch's profiler: the
                         planner's count of elementwise bytes (estimate.elementwise_traffic) over
                         the time of every op but the matmul and attention kernels
  cores_per_node         the cores this process may run on (os.sched_getaffinity)
  levels                 gloo collectives between real local processes: for each group size,
                         all_reduce, all_gather, reduce_scatter and all_to_all at a small and a large
                         size; bandwidth and latency of each from the two timings and the machine
                         model's formula (Machine.collective_seconds)
  runtime_overhead_gb, zero_overhead_gb, precision_overhead_gb, framework_overhead_ms
                         a tiny training run (the model, the engine's DeepSpeed setup and step) in a
                         fresh process, ZeRO 0 and 3, depths 1 and 3, fp32 and bf16: the resident
                         memory it adds beyond the tensors the planner counts, and its time beyond
                         the planner's compute (per step, per block)

measure_training() is also how benchmarks/plan_validation.py measures whole configurations: real
processes (torch.distributed gloo), the engine's model and DeepSpeed set-up and step. Time: the
median over steps after warm-up of the slowest rank's step, glibc's allocator as training runs
it. Memory: the peak of the resident set a rank adds (VmHWM, reset after imports and before the
model is built, minus the resident set then), in a second world of fresh processes in which
glibc returns every freed block of 64 KiB or more to the system (MALLOC_MMAP_THRESHOLD_), so
that the resident set follows live memory; with glibc's defaults it keeps freed blocks for
reuse, which `resident_bytes` shows.

The machine file is rewritten in place: each measured key's value is replaced on its own line,
its comment kept, or the key is appended; `calibrated:` records the date, torch version and CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from seqvit.errors import SeqvitError
from seqvit.machines import machine_path
from seqvit.plan.estimate import RunShape, plan_run
from seqvit.plan.machine import COLLECTIVES, load_machine

GB = 1e9
MIN_LATENCY = 1e-7  # s: a fit that leaves no latency (timing noise) records this instead of zero


@dataclass(frozen=True)
class Sizes:
    """How much to measure: seconds per rate, collective sizes and group sizes, the tiny training run."""

    seconds: float = 1.0  # per rate (matmul, attention, bandwidth)
    attention: tuple = (1, 2048, 4, 64)  # batch, tokens, heads, head_dim
    # the model whose elementwise ops are timed: 4 channels of 2 x 2 pixels, 16 x 32 patches, width 256
    elementwise: tuple = (4, 16, 32, 256, 4, 2, 4)  # channels, rows, cols, width, heads, depth, batch
    collective_bytes: tuple = (4096, 8 << 20)  # per rank: latency-bound, bandwidth-bound
    ranks: tuple = (2, 4, 8)  # group sizes of the collectives
    repeats: int = 9
    training: bool = True  # the tiny training runs (overheads)
    training_steps: int = 6


QUICK = Sizes(
    seconds=0.05,
    attention=(1, 256, 2, 32),
    elementwise=(2, 8, 16, 64, 2, 1, 2),
    collective_bytes=(1024, 1 << 18),
    ranks=(2,),
    repeats=3,
    training_steps=3,
)


# --- rates of one thread ----------------------------------------------------------------------


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _best(fn, seconds: float, at_least: int = 3) -> float:
    """Shortest of repeated timings of fn() (after one warm-up), for about `seconds`."""
    fn()
    best, count, deadline = float("inf"), 0, time.perf_counter() + seconds
    while count < at_least or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        count += 1
    return best


def matmul_tflops(precision: str, seconds: float) -> float:
    from seqvit.train.throughput import measured_cpu_peak_tflops

    return measured_cpu_peak_tflops(1, precision, seconds)


def attention_tflops(precision: str, seconds: float, shape=(1, 2048, 4, 64)) -> float:
    """Model FLOP/s of the sdpa kernel, forward + backward, on q, k, v [batch, tokens, heads, head_dim]."""
    from seqvit.model.attention import attention

    batch, tokens, heads, dim = shape
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    generator = torch.Generator().manual_seed(0)
    # one [B, N, 3, H, d] buffer, as the model's qkv projection makes them
    qkv = torch.randn(batch, tokens, 3, heads, dim, generator=generator).to(dtype).requires_grad_()

    def step():
        q, k, v = qkv.unbind(2)
        out = attention(q, k, v, backend="sdpa")
        out.backward(torch.ones_like(out))
        qkv.grad = None

    with _threads(1):
        seconds_per_step = _best(step, seconds)
    return 3 * 4 * batch * tokens * tokens * heads * dim / seconds_per_step / 1e12


# the kernels whose time the matmul and attention rates cover; everything else the model runs is elementwise
_RATED_OPS = ("aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def elementwise_gbs(precision: str, shape: RunShape, repeats: int = 3) -> float:
    """Bytes of the planner's elementwise count (estimate.elementwise_traffic) per second, on one thread.

    One training step of the model (forward, loss, backward, AdamW) for `shape` runs under
    torch's profiler; the time of every op but the matmul and attention kernels (layer norms,
    GELU, adds, layout copies, the channel aggregation's small batched matmuls, the optimizer)
    is what the count's bytes took. The median over `repeats` profiled steps.
    """
    from torch.profiler import ProfilerActivity, profile

    from seqvit.model.vit import build_model
    from seqvit.plan.estimate import elementwise_traffic, parameter_count

    shape = replace(shape, precision=precision)
    rows, cols = shape.grid
    p = shape.patch_size
    cfg = _run_config(shape)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    with _threads(1):
        torch.manual_seed(0)
        model = build_model(cfg["model"], shape.channels, p, (rows * p, cols * p)).to(dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(shape.batch_size, shape.channels, shape.tokens, p * p)
        lead = torch.full((shape.batch_size,), 6.0)

        def step():
            loss = (model(x.to(dtype), lead).float() - x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        seconds = []
        for _ in range(repeats):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            rest = sum(
                e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::") and not _rated(e.key)
            )
            seconds.append(rest / 1e6)
    a, params = {"fp32": 4, "bf16": 2}[precision], parameter_count(shape)
    # torch's AdamW on the model's dtype: weights, gradients, m and v
    memory = {"weights": a * params, "gradients": a * params, "optimizer": 2 * a * params}
    return elementwise_traffic(shape, memory) / statistics.median(seconds) / 1e9


def _rated(name: str) -> bool:
    return name in _RATED_OPS or name == "aten::_scaled_dot_product_flash_attention_for_cpu_backward"


# --- collectives between processes ----------------------------------------------------------------


def _collective(kind: str, nbytes: int, world: int):
    """A callable running one `kind` collective for a rank buffer of nbytes (machine.collective_seconds sizes)."""
    n = max(1, nbytes // 4)
    if kind == "all_reduce":
        buf = torch.ones(n)
        return lambda: dist.all_reduce(buf)
    if kind == "all_gather":
        inp, out = torch.ones(n), torch.empty(world * n)
        return lambda: dist.all_gather_single(out, inp)
    if kind == "reduce_scatter":
        inp, out = torch.ones(world * n), torch.empty(n)
        return lambda: dist.reduce_scatter_single(out, inp)
    n = max(world, n - n % world)
    inp, out = torch.ones(n), torch.empty(n)
    return lambda: dist.all_to_all_single(out, inp)


def _collective_worker(rank: int, world: int, sizes: tuple, repeats: int) -> dict:
    timings = {}
    for kind in COLLECTIVES:
        for nbytes in sizes:
            run = _collective(kind, nbytes, world)
            run()
            seconds = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
            timings[(kind, nbytes)] = statistics.median(seconds)
    return timings


def _formula(kind: str, g: int) -> tuple[float, int]:
    """(bytes factor, latency steps) of Machine.collective_seconds for g ranks."""
    if kind in ("all_gather", "reduce_scatter"):
        return g - 1, g - 1
    if kind == "all_to_all":
        return (g - 1) / g, 1
    return 2 * (g - 1) / g, 2 * (g - 1)


def fit_collective(kind: str, g: int, small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(bytes/s, s) that give both timings (bytes, seconds) under the machine model's formula."""
    factor, steps = _formula(kind, g)
    (s1, t1), (s2, t2) = small, large
    if t2 > t1:
        bandwidth = factor * (s2 - s1) / (t2 - t1)
    else:  # noise swamped the difference: all of the large timing is bandwidth
        bandwidth = factor * s2 / t2
    latency = max((t1 - factor * s1 / bandwidth) / steps, MIN_LATENCY)
    return bandwidth, latency


def collective_levels(sizes: Sizes) -> list[dict]:
    """One machine-file level per group size, with the figures of each collective."""
    from seqvit.parallel.spawn import spawn

    levels = []
    cores = len(os.sched_getaffinity(0))
    for g in sizes.ranks:
        per_rank = spawn(_collective_worker, g, sizes.collective_bytes, sizes.repeats, timeout_s=600)
        collectives = {}
        for kind in COLLECTIVES:
            small, large = ((nbytes, max(r[(kind, nbytes)] for r in per_rank)) for nbytes in sizes.collective_bytes)
            bandwidth, latency = fit_collective(kind, g, small, large)
            collectives[kind] = {"bandwidth_gbs": _round(bandwidth / GB), "latency_us": _round(latency * 1e6)}
        levels.append(
            {
                "name": f"{g} processes on {min(g, cores)} core{'s' if min(g, cores) > 1 else ''}",
                "ranks": g,
                "bandwidth_gbs": collectives["all_reduce"]["bandwidth_gbs"],
                "latency_us": collectives["all_reduce"]["latency_us"],
                "collectives": collectives,
            }
        )
    return levels


# --- whole training runs ----------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        match = re.search(rf"^{key}:\s+(\d+)", handle.read(), re.M)
    if match is None:
        raise SeqvitError(f"/proc/self/status has no {key}: memory is measured on Linux only")
    return int(match.group(1))


def _settle() -> int:
    """Resident bytes now, after freeing what can be freed; resets the high-water mark to it."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_kb("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS
    return base


def _run_config(shape: RunShape) -> dict:
    """The config sections training reads, for a shape."""
    return {
        "model": {
            "embed_dim": shape.embed_dim,
            "depth": shape.depth,
            "num_heads": shape.num_heads,
            "mlp_ratio": shape.mlp_ratio,
            "dropout": 0.0,
            "attention": shape.attention,
        },
        "train": {
            "batch_size": shape.batch_size,
            "grad_accumulation": shape.grad_accumulation,
            "zero_stage": shape.zero_stage,
            "precision": shape.precision,
            "activation_checkpointing": shape.activation_checkpointing,
            "grad_clip": 0.0,
        },
        "parallel": {"sp": shape.sp, "sp_method": shape.sp_method, "uneven": "error", "dp": shape.dp},
    }


def _train_one(shape: RunShape, rank: int, steps: int, warmup: int, deepspeed) -> dict:
    from seqvit.model.vit import build_model
    from seqvit.parallel import groups
    from seqvit.parallel.step_share import StepShare
    from seqvit.train import engine

    cfg = _run_config(shape)
    layout = groups.init_distributed(shape.sp)
    rows, cols = shape.grid
    p = shape.patch_size
    base = _settle()
    torch.manual_seed(0)
    model = build_model(cfg["model"], shape.channels, p, (rows * p, cols * p))
    model.activation_checkpointing = shape.activation_checkpointing
    if layout.distributed:
        engine._sequence_parallel(cfg, layout, model, p)
    tokens = model.num_tokens
    shard = StepShare.of(layout, tokens, shape.batch_size, torch.full((tokens, p * p), 1.0 / tokens))
    optimizer = torch.optim.AdamW(model.weight_decay_groups(0.05), lr=1e-4, betas=(0.9, 0.95))
    ds_config = engine.deepspeed_config(cfg["train"], shard.local_batch)
    eng, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    dtype = engine.PRECISIONS[shape.precision]
    accumulation = ds_config["gradient_accumulation_steps"]
    generator = torch.Generator().manual_seed(rank)
    # fp32 tokens and targets of this rank's samples and segment, as the loader delivers them
    x = torch.randn(shard.local_batch, shape.channels, shard.stop - shard.start, p * p, generator=generator)
    y = torch.randn(x.shape, generator=generator)
    lead = torch.full((shard.local_batch,), 6.0)

    def step():  # the engine's step (train/engine.py segment_loss and loop)
        for xc, lc, yc in zip(x.chunk(accumulation), lead.chunk(accumulation), y.chunk(accumulation)):
            pred = eng(xc.to(dtype), lc, token_offset=shard.start).float()
            loss = shard.scaled(engine.weighted_mse(pred, yc - xc, shard.weights))
            eng.backward(loss)
            eng.step()

    seconds, cpu = [], []
    for i in range(warmup + steps):
        if layout.distributed:
            dist.barrier()
        if i == warmup:
            window = (time.perf_counter(), time.process_time(), _busy_seconds())
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = _status_kb("VmHWM") * 1024 - base
    timed = {
        "wall": time.perf_counter() - window[0],
        "own": time.process_time() - window[1],  # this rank's CPU seconds in the timed steps
        "busy": _busy_seconds() - window[2],  # the machine's, every process's
    }
    return {"seconds": seconds[warmup:], "cpu": cpu[warmup:], "peak": peak, "timed": timed}


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes; a VM's stolen time too)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _training_worker(rank: int, world: int, shapes: list, steps: int, warmup: int) -> list:
    from seqvit.train import engine

    deepspeed = engine._import_deepspeed("cpu")
    return [_train_one(shape, rank, steps, warmup, deepspeed) for shape in shapes]


@dataclass(frozen=True)
class Measured:
    step_seconds: float  # median over steps of the slowest rank's step
    peak_bytes: float  # the largest peak over ranks of the memory the run added (live: freed blocks returned)
    seconds: tuple  # per step, slowest rank
    cpu_seconds: float  # median over steps of the largest CPU time of a rank's process in a step
    resident_bytes: float  # the peak of the timed run, glibc keeping freed blocks (its defaults, as in training)
    others_cores: float = 0.0  # cores other processes kept busy, on average, during the timed steps


def _world(shapes: list[RunShape], steps: int, warmup: int, timeout_s: float, live_memory: bool) -> list:
    """Per shape, per rank: what _train_one measured, in one world of fresh processes."""
    from seqvit.parallel.spawn import spawn

    worlds = {s.world for s in shapes}
    if len(worlds) != 1:
        raise SeqvitError(f"measure_training: one world size per call, got {sorted(worlds)}")
    world = next(iter(worlds))
    threads = max(max(1, s.threads // world) for s in shapes)  # train.threads is shared by the machine's ranks
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if live_memory:  # glibc returns every freed block of 64 KiB or more: the resident set follows live memory
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        per_rank = spawn(_training_worker, world, shapes, steps, warmup, threads=threads, timeout_s=timeout_s)
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    return [[ranks[i] for ranks in per_rank] for i in range(len(shapes))]


def measure_training(shapes: list[RunShape], steps: int = 5, warmup: int = 2, timeout_s: float = 900) -> list:
    """Time and memory of each shape (all of one world size), as Measured.

    Two worlds of fresh processes run the shapes one after another: one timed with glibc's
    defaults, as training runs; one (warm-up and one step, for the peak) with freed blocks
    returned to the system, so that the resident set follows live memory (on the defaults it
    stays higher, with blocks kept for reuse; too slow to time: every large tensor faults its
    pages in anew). Only the first shape's memory is that of a fresh process.
    """
    timed = _world(shapes, steps, warmup, timeout_s, live_memory=False)
    live = _world(shapes, 1, 1, timeout_s, live_memory=True)
    out = []
    for runs, memory in zip(timed, live):
        slowest = tuple(max(r["seconds"][k] for r in runs) for k in range(steps))
        cpu = statistics.median(max(r["cpu"][k] for r in runs) for k in range(steps))
        peak = max(r["peak"] for r in memory)
        window = runs[0]["timed"]  # rank 0's view of the machine; every rank's own CPU time is subtracted
        others = max(window["busy"] - sum(r["timed"]["own"] for r in runs), 0.0) / window["wall"]
        out.append(Measured(statistics.median(slowest), peak, slowest, cpu, max(r["peak"] for r in runs), others))
    return out


TINY = RunShape(
    patch_size=2,
    channels=2,
    tokens=128,
    embed_dim=32,
    depth=1,
    num_heads=2,
    mlp_ratio=4.0,
    attention="sdpa",
    batch_size=2,
    grad_accumulation=1,
    zero_stage=0,
    precision="fp32",
    activation_checkpointing=False,
    sp=1,
    dp=1,
    sp_method="ulysses",
    patch_rows=8,
    patch_cols=16,
)


def training_overheads(machine_file: Path, steps: int) -> dict:
    """Memory and time of tiny training runs beyond what the planner counts (module docstring)."""
    machine = load_machine(str(machine_file))
    unmodelled = replace(machine, overhead=0.0, zero_overhead=0.0, step_overhead=0.0, block_overhead=0.0)
    unmodelled = replace(unmodelled, zero3_block_overhead=0.0, precision_overhead={})
    found: dict = {}
    # bf16 loads other kernels and DeepSpeed's bf16 optimizer: its own fresh process, memory only
    (bf16,) = _world([replace(TINY, precision="bf16")], 1, 1, 900, live_memory=True)
    found["memory_bf16"] = max(r["peak"] for r in bf16) - plan_run(replace(TINY, precision="bf16"), unmodelled).peak
    for stage in (0, 3):
        shapes = [replace(TINY, zero_stage=stage, depth=depth) for depth in (1, 3)]
        measured = measure_training(shapes, steps=steps, warmup=2)
        plans = [plan_run(s, unmodelled) for s in shapes]
        # memory: the fresh process's first run, less the tensors the planner counts
        found[f"memory{stage}"] = measured[0].peak_bytes - plans[0].peak
        rest = [m.step_seconds - p.step_seconds for m, p in zip(measured, plans)]
        found[f"block{stage}"] = max((rest[1] - rest[0]) / 2, 0.0)
        found[f"step{stage}"] = max(rest[0] - found[f"block{stage}"], 0.0)
    return {
        "runtime_overhead_gb": _round(max(found["memory0"], 0.0) / GB),
        "zero_overhead_gb": _round(max(found["memory3"] - found["memory0"], 0.0) / GB),
        "precision_overhead_gb": {"bf16": _round(max(found["memory_bf16"] - found["memory0"], 0.0) / GB)},
        "framework_overhead_ms": {
            "step": _round(found["step0"] * 1e3),
            "block": _round(found["block0"] * 1e3),
            "zero3_block": _round(max(found["block3"] - found["block0"], 0.0) * 1e3),
        },
    }


# --- the machine file -------------------------------------------------------------------------------


def _round(value: float, digits: int = 3) -> float:
    """`digits` significant digits (the file stays readable; timing noise is larger)."""
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flow(value) -> str:
    """A YAML flow value on one line."""
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip().removesuffix("...").strip()
    )


def update_machine_file(path: Path, values: dict) -> None:
    """Replace (or append) top-level keys of a machine file in place, keeping every comment.

    A key's value is rewritten on its own line after `key:`, the line's comment kept; lines
    indented below it (a block list) are replaced; `levels` is written as one flow mapping per
    line. Keys not in the file are appended.
    """
    from seqvit.io import atomic_path

    lines = path.read_text().splitlines()
    for key, value in values.items():
        if key == "levels":
            body = [f"  - {_flow(level)}" for level in value]
            inline = ""
        else:
            body, inline = [], " " + _flow(value)
        at = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(key)}:(\s|$)", line)), None)
        if at is None:
            lines += [f"{key}:{inline}", *body]
            continue
        comment = re.search(r"\s+(#.*)$", lines[at])
        head = f"{key}:{inline}"
        if comment:  # kept in its column where the new value leaves room
            head = head.ljust(max(len(head) + 2, comment.start(1))) + comment.group(1)
        end = at + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or lines[end].startswith("- ")):
            end += 1
        lines[at:end] = [head, *body]
    text = "\n".join(lines) + "\n"
    yaml.safe_load(text)  # still one YAML document
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def calibrate(machine: str = "cpu-local", sizes: Sizes = Sizes(), log=print) -> Path:
    """Measure this machine and write the figures into its machine file; returns the file's path."""
    path = machine_path(machine)
    load_machine(str(path))  # a valid file before anything is measured
    started = time.perf_counter()
    values: dict = {}
    values["peak_tflops"] = {p: _round(matmul_tflops(p, sizes.seconds)) for p in ("bf16", "fp32")}
    log(f"matmul, one thread: {values['peak_tflops']} TFLOP/s")
    values["attention_tflops"] = {
        p: _round(attention_tflops(p, sizes.seconds, sizes.attention)) for p in ("bf16", "fp32")
    }
    log(f"attention (sdpa forward + backward), one thread: {values['attention_tflops']} TFLOP/s")
    channels, rows, cols, width, heads, depth, batch = sizes.elementwise
    model = replace(
        TINY,
        channels=channels,
        tokens=rows * cols,
        patch_rows=rows,
        patch_cols=cols,
        embed_dim=width,
        num_heads=heads,
        depth=depth,
        batch_size=batch,
    )
    values["elementwise_gbs"] = {p: _round(elementwise_gbs(p, model)) for p in ("bf16", "fp32")}
    log(f"elementwise traffic of the model's own ops, one thread: {values['elementwise_gbs']} GB/s")
    values["cores_per_node"] = len(os.sched_getaffinity(0))
    values["levels"] = collective_levels(sizes)
    for level in values["levels"]:
        log(f"collectives, {level['name']}: {level['collectives']}")
    update_machine_file(path, values)  # the overheads below are measured against these rates
    if sizes.training:
        overheads = training_overheads(path, sizes.training_steps)
        log(f"training runtime: {overheads}")
        values = overheads
    else:
        values = {}
    values["calibrated"] = {
        "date": datetime.date.today().isoformat(),
        "torch": str(torch.__version__),
        "cpu": cpu_model(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    update_machine_file(path, values)
    load_machine(str(path))
    return path
