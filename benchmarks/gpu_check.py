"""One GPU, one prepared run: attention kernels, Frontier-shape training steps, two ranks on one device.

    python benchmarks/gpu_check.py --out DIR                  # on a GPU: under 8 minutes (--budget-s 400)
    python benchmarks/gpu_check.py --dry-run --out DIR        # seconds: every section on tiny sizes

Prints a table per section and writes DIR/gpu_check.json (rewritten after every section, so a
run cut short keeps what it measured). Each section records its own failure instead of
stopping the script, and a size whose predicted time would overrun the section's share of the
budget is skipped and listed with that reason.

1. kernels: which torch.nn.attention.SDPBackend backends run here (a small bf16 forward and
   backward under sdpa_kernel with that backend alone) and which one SDPA picks by itself; the
   measured rate of 8192^3 bf16 matmuls; forward+backward TFLOP/s of attention in bf16 at 4K to
   128K tokens, head dims 64 and 128 (batch 1, 1024 / head_dim heads: the Frontier model's
   width), through seqvit.model.attention for each SDPA backend that runs and for flash-attn
   where it is installed (whose output is also checked against SDPA). FLOPs counted: 12 N^2 H d
   per call (forward 4, backward 8; recomputation not counted, as seqvit.train.throughput).
2. training: the model section of config/frontier-seqscale.yaml (read with seqvit.config) on one
   process: batch 1, bf16 weights with fp32 AdamW master weights (DeepSpeed's bf16 layout, the
   one seqvit.plan models), activation checkpointing, model.attention as configured; at the
   longest sequence (patch size of the config) that seqvit.plan predicts to fit the device's
   memory and whose predicted step time fits the budget. Reports tokens/s, MFU against the
   measured matmul rate and against the datasheet peak of the machine file (--machine), and the
   allocator's peak (torch.cuda.max_memory_allocated) next to the plan's prediction.
3. two ranks, one device: NCCL refuses two ranks on one GPU (tried, its answer recorded); gloo
   with the device's tensors: which collectives it carries, then a few sp=2 training steps of a
   small ForecastViT per sequence-parallel method (seqvit.parallel's attention, StepShare, tests/shard_steps.py and its
   gradient all-reduce), checked against one process, with the device of every collective's
   tensor recorded.

--dry-run shrinks every size (a 64-wide model, hundreds of tokens) and runs on the CPU where
there is no GPU; the measurements only a GPU gives (allocator peak, NCCL) are listed under
"gpu_only_skipped" with the reason.

Imports: torch, numpy and PyYAML; seqvit.plan reads the channel list through seqvit.data.fields,
which imports xarray and pandas; jsonschema where installed (config validation: without it the
config file is read as is, and the JSON says so). Neither DeepSpeed nor zarr: the engine needs
both (and a tokens store), so the training steps here are a plain torch loop over the project's
model and its sequence-parallel pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WIDTH = 1024  # the Frontier model's embed_dim: heads = WIDTH / head_dim in the attention table
SECTION_SHARES = {"kernels": 0.35, "training": 0.45, "two_ranks": 0.20}
SECTIONS = tuple(SECTION_SHARES)
SLACK = 1.5  # training: predicted step times are stretched by this before they are held against the budget
BUILD_S = 30.0  # training: seconds allowed for building the model (its position table grows with the tokens)
GIB = 2**30


# --- sizes ------------------------------------------------------------------------------------


def sizes(dry_run: bool) -> dict:
    if dry_run:
        return {
            "matmul_n": 256,
            "matmul_reps": 3,
            "attention_reps": 2,
            "tokens": [128, 256],
            "head_dims": [16, 32],
            "width": 64,
            "model": {"embed_dim": 64, "depth": 2, "num_heads": 4},
            "grid": "5.625deg",
            "max_tokens": 1024,
            "steps": 1,
            "sp_grid": (8, 16),
            "sp_dim": 24,
            "sp_heads": 4,
            "sp_steps": 2,
        }
    return {
        "matmul_n": 8192,
        "matmul_reps": 10,
        "attention_reps": 3,
        "tokens": [4096, 8192, 16384, 32768, 65536, 131072],
        "head_dims": [64, 128],
        "width": WIDTH,
        "model": {},
        "grid": None,
        "max_tokens": None,
        "steps": 3,
        "sp_grid": (32, 64),
        "sp_dim": 128,
        "sp_heads": 4,
        "sp_steps": 3,
    }


# --- timing and devices -----------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, reps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `reps` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_device_memory(device) -> None:
    """Hand cached GPU blocks back before the next size (a CPU needs nothing: gc alone costs seconds there)."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict:
    from seqvit.model.attention import describe_device, flash_installed

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "device": str(device),
        "device_info": str(describe_device(device)),
        "flash_attn": None,
    }
    if flash_installed():
        info["flash_attn"] = getattr(sys.modules["flash_attn"], "__version__", "installed")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(device_name=torch.cuda.get_device_name(device), memory_gib=total / GIB, free_gib=free / GIB)
    else:
        info.update(device_name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


class Budget:
    """Wall-clock deadlines: the whole run, and each section's share of what is left when it starts."""

    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.end = self.start + seconds
        self.section_end = self.end

    def open_section(self, name: str, sections: list[str]) -> None:
        remaining = [s for s in sections if SECTIONS.index(s) >= SECTIONS.index(name)]
        share = SECTION_SHARES[name] / sum(SECTION_SHARES[s] for s in remaining)
        self.section_end = time.monotonic() + share * self.left()

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def section_left(self) -> float:
        return max(0.0, min(self.section_end, self.end) - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# --- section 1: SDPA kernels, matmul rate, attention FLOP/s -----------------------------------


def sdpa_backends() -> dict:
    from torch.nn.attention import SDPBackend

    return {name: member for name, member in SDPBackend.__members__.items() if name != "ERROR"}


def probe_sdpa_backends(device) -> dict:
    """Which SDPA backends run a small bf16 forward+backward here, alone."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    found = {}
    for name, backend in sdpa_backends().items():
        q, k, v = (torch.randn(1, 2, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in "qkv")
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v).float().sum().backward()
            synchronize(device)
            found[name] = {"runs": True}
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run is the finding
            found[name] = {"runs": False, "error": first_line(exc)}
    return found


def default_sdpa_choice(device, heads: int, head_dim: int, tokens: int) -> str:
    """The backend SDPA picks for bf16 [1, H, N, d] inputs that need gradients (torch._fused_sdp_choice,
    a private helper)."""
    from torch.nn.attention import SDPBackend

    q = torch.empty(1, heads, tokens, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        return SDPBackend(int(torch._fused_sdp_choice(q, q, q))).name
    except Exception as exc:  # noqa: BLE001 - private API: absent or changed in some torch versions
        return f"unknown ({first_line(exc)})"


def matmul_rate(device, n: int, reps: int) -> dict:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = time_calls(lambda: a @ b, device, reps, warmup=2)
    best = statistics.median(seconds)
    return {"n": n, "dtype": "bf16", "reps": reps, "median_s": best, "tflops": 2.0 * n**3 / best / 1e12}


def attention_flops(tokens: int, heads: int, head_dim: int) -> float:
    """Forward 4 N^2 H d (Q K^T and A V) plus backward 8 N^2 H d; no recomputation counted."""
    return 12.0 * tokens * tokens * heads * head_dim


def attention_kernels(found: dict, device) -> list[tuple[str, str, object]]:
    """(label, seqvit backend name, SDPBackend or None) for every kernel worth timing here."""
    from seqvit.model.attention import describe_device, flash_installed, flash_unsupported

    kernels: list[tuple[str, str, object]] = [("sdpa (default choice)", "sdpa", None)]
    for name, backend in sdpa_backends().items():
        if name != "OVERRIDEABLE" and found.get(name, {}).get("runs"):
            kernels.append((f"sdpa {name}", "sdpa", backend))
    if flash_unsupported(describe_device(device), torch.bfloat16, 64, flash_installed()) is None:
        kernels.append(("flash-attn", "flash", None))
    return kernels


def check_flash_against_sdpa(device, tokens: int = 1024) -> dict:
    """flash-attn's output and log-sum-exp through seqvit.model.attention against SDPA and an explicit lse."""
    from seqvit.model.attention import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, tokens, 16, 64, device=device, dtype=torch.bfloat16) for _ in "qkv")
    out, lse = attention(q, k, v, "flash", return_lse=True)
    reference = attention(q.float(), k.float(), v.float(), "sdpa")
    scores = torch.einsum("bshd,bthd->bhst", q.float(), k.float()) / math.sqrt(64)
    return {
        "tokens": tokens,
        "max_abs_error_vs_fp32_sdpa": float((out.float() - reference).abs().max()),
        "max_abs_reference": float(reference.abs().max()),
        "max_abs_lse_error": float((lse - torch.logsumexp(scores, dim=-1)).abs().max()),
    }


def section_kernels(args, sz, device, budget: Budget, report: dict) -> None:
    from torch.nn.attention import sdpa_kernel

    from seqvit.model.attention import attention

    found = probe_sdpa_backends(device)
    report["sdpa_backends"] = found
    report["sdpa_default_choice"] = {
        f"d{d}_N{n}": default_sdpa_choice(device, sz["width"] // d, d, n) for d in sz["head_dims"] for n in sz["tokens"]
    }
    print("SDPA backends (bf16 forward+backward, each alone):")
    for name, result in found.items():
        print(f"  {name:<22}{'runs' if result['runs'] else 'does not run: ' + result['error']}")
    print(f"  SDPA's own choice: {report['sdpa_default_choice']}")

    rate = matmul_rate(device, sz["matmul_n"], sz["matmul_reps"])
    report["matmul"] = rate
    print(f"bf16 matmul {rate['n']}^3: {rate['tflops']:.1f} TFLOP/s (median of {rate['reps']})")

    kernels = attention_kernels(found, device)
    if any(backend == "flash" for _, backend, _ in kernels):
        try:
            report["flash_attn_check"] = check_flash_against_sdpa(device)
        except Exception as exc:  # noqa: BLE001
            report["flash_attn_check"] = {"error": first_line(exc)}
    rows = []
    report["attention"] = rows
    print(f"{'kernel':<28}{'d':>5}{'heads':>6}{'tokens':>8}{'ms':>10}{'TFLOP/s':>9}{'vs matmul':>10}")
    for label, backend, sdp in kernels:
        for head_dim in sz["head_dims"]:
            heads = sz["width"] // head_dim
            last = None  # (tokens, seconds) of the previous size: attention time grows as N^2
            for tokens in sz["tokens"]:
                row = {"kernel": label, "head_dim": head_dim, "heads": heads, "tokens": tokens}
                rows.append(row)
                predicted = last[1] * (tokens / last[0]) ** 2 if last else 0.0
                reps = sz["attention_reps"]
                if last and predicted * (reps + 1) > budget.section_left():
                    reps = 1
                if last and predicted * (reps + 1) > budget.section_left():
                    row["skipped"] = f"predicted {predicted:.2f} s per call: over the section's budget"
                    continue
                if sdp is not None and sdp.name == "MATH":
                    need = 3 * heads * tokens * tokens * 4  # fp32 scores, probabilities and their gradient
                    room = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 8 * GIB
                    if need > 0.5 * room:
                        row["skipped"] = f"math kernel: N^2 scores need {need / GIB:.1f} GiB"
                        continue
                try:
                    q, k, v = (
                        torch.randn(1, tokens, heads, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
                        for _ in "qkv"
                    )
                    grad = torch.randn(1, tokens, heads, head_dim, device=device, dtype=torch.bfloat16)

                    def step(q=q, k=k, v=v, grad=grad, backend=backend, sdp=sdp):
                        with sdpa_kernel(sdp) if sdp is not None else contextlib.nullcontext():
                            out = attention(q, k, v, backend)
                        torch.autograd.backward(out, grad)

                    seconds = statistics.median(time_calls(step, device, reps))
                except Exception as exc:  # noqa: BLE001 - recorded per size; larger sizes are skipped
                    row["error"] = first_line(exc)
                    free_device_memory(device)
                    break
                finally:
                    q = k = v = grad = None  # noqa: F841 - free before the next size
                last = (tokens, seconds)
                row.update(ms=seconds * 1e3, tflops=attention_flops(tokens, heads, head_dim) / seconds / 1e12)
                row["vs_matmul"] = row["tflops"] / rate["tflops"]
                print(
                    f"{label:<28}{head_dim:>5}{heads:>6}{tokens:>8}{row['ms']:>10.2f}{row['tflops']:>9.1f}"
                    f"{row['vs_matmul']:>10.2f}"
                )
            free_device_memory(device)


# --- section 2: training steps of the Frontier model shape ------------------------------------


def load_frontier_config(path: Path) -> tuple[dict, dict]:
    """The config through seqvit.config (validated, schema defaults filled), else the file as is."""
    try:
        import jsonschema  # noqa: F401
    except ImportError as exc:
        import yaml

        return yaml.safe_load(path.read_text()), {
            "validated": False,
            "why": f"{first_line(exc)}: read without the schema",
        }
    from seqvit.config import load_config

    return load_config(path), {"validated": True}


def default_machine(device) -> str:
    if device.type != "cuda":
        return "cpu-local"
    return "frontier" if getattr(torch.version, "hip", None) else "h200"


class MasterAdamW:
    """AdamW on fp32 master copies of bf16 weights: DeepSpeed's bf16 layout, 12 bytes per parameter in the
    optimizer (master, m, v), as seqvit.plan counts. Written out (Loshchilov and Hutter's update, bias
    corrected) rather than torch.optim.AdamW, whose first use imports torch._dynamo (seconds on a CPU)."""

    def __init__(self, model, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().clone() for p in self.params]
        self.m = [torch.zeros_like(w) for w in self.master]
        self.v = [torch.zeros_like(w) for w in self.master]
        self.lr, self.weight_decay, self.betas, self.eps, self.steps = lr, weight_decay, betas, eps, 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        for p, w, m, v in zip(self.params, self.master, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad.float()
            p.grad = None
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            w.mul_(1 - self.lr * self.weight_decay)
            denom = (v / (1 - b2**self.steps)).sqrt_().add_(self.eps)
            w.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.steps))
            p.copy_(w)


def run_shape_for(cfg: dict, patch: int):
    """The one-GPU run of the config at one patch size: sp = dp = 1, batch 1, bf16, checkpointing."""
    from seqvit.plan import run_shape

    one = copy.deepcopy(cfg)
    one.setdefault("parallel", {})["runs"] = {patch: {"sp": 1, "dp": 1}}
    one["train"].update(batch_size=1, grad_accumulation=1, activation_checkpointing=True, precision="bf16")
    return run_shape(one, patch)


def train_steps(cfg: dict, patch: int, device, steps: int) -> dict:
    from seqvit.data.grids import named_grid
    from seqvit.model.vit import build_model

    shape = run_shape_for(cfg, patch)
    built = time.perf_counter()
    model = build_model(cfg["model"], shape.channels, patch, named_grid(cfg["grid"]).shape)
    model.activation_checkpointing = True
    model = model.to(device=device, dtype=torch.bfloat16).train()
    optimizer = MasterAdamW(model, float(cfg["train"].get("lr", 1e-4)), float(cfg["train"].get("weight_decay", 0.0)))
    built = time.perf_counter() - built
    gen = torch.Generator(device="cpu").manual_seed(0)
    pixels = patch * patch
    x = torch.randn(1, shape.channels, model.num_tokens, pixels, generator=gen).to(device, torch.bfloat16)
    target = torch.randn(1, shape.channels, model.num_tokens, pixels, generator=gen).to(device, torch.float32)
    lead = torch.tensor([6.0], device=device)
    losses: list[float] = []

    def step():
        pred = model(x, lead)
        loss = ((pred.float() - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_calls(step, device, steps, warmup=1)
    result = {
        "patch_size": patch,
        "tokens": model.num_tokens,
        "channels": shape.channels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_s": built,
        "step_s": seconds,
        "losses": losses,  # the warm-up step's first
    }
    if device.type == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    return result


def section_training(args, sz, device, budget: Budget, report: dict, matmul: dict | None) -> None:
    from seqvit.plan import load_machine, plan_run

    cfg, how = load_frontier_config(Path(args.config))
    report["config"] = {"path": str(args.config), **how}
    cfg["model"].update(sz["model"])
    if sz["grid"]:
        cfg["grid"] = sz["grid"]
    report["model"] = dict(cfg["model"])
    report["grid"] = cfg["grid"]
    machine = load_machine(args.machine if args.machine != "auto" else default_machine(device))
    report["machine"] = {"name": machine.name, "datasheet_bf16_tflops": machine.peak("bf16") / 1e12}
    capacity = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else machine.memory
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else machine.memory
    rate = matmul["tflops"] * 1e12 if matmul else None

    candidates = []
    for patch in cfg["tokenize"]["patch_sizes"]:
        try:
            shape = run_shape_for(cfg, int(patch))
        except Exception as exc:  # noqa: BLE001 - e.g. a patch size that does not divide the dry run's grid
            report.setdefault("not_planned", []).append({"patch_size": int(patch), "why": first_line(exc)})
            continue
        plan = plan_run(shape, machine)
        # step time from the plan's FLOPs at the measured matmul rate times the machine's efficiency
        seconds = plan.flops["executed_per_rank"] / (rate * machine.efficiency) if rate else plan.step_seconds
        candidates.append(
            {
                "patch_size": int(patch),
                "tokens": shape.tokens,
                "predicted_peak_gib": plan.peak / GIB,
                "predicted_peak_without_overhead_gib": (plan.peak - plan.memory["runtime overhead"]) / GIB,
                "predicted_step_s": seconds,
                "model_flops_per_step": plan.flops["model_per_rank"],
            }
        )
    candidates.sort(key=lambda c: -c["tokens"])
    report["candidates"] = candidates
    print(f"machine {machine.name} ({report['machine']['datasheet_bf16_tflops']:.3g} TFLOP/s bf16 datasheet)")
    print(f"{'patch':>6}{'tokens':>10}{'plan peak GiB':>15}{'plan step s':>13}  decision")
    run = None
    for cand in candidates:
        # the plan's step time, with room for it being optimistic, for a warm-up step and at least one timed
        step_s = SLACK * cand["predicted_step_s"]
        steps = int(min(sz["steps"], (budget.section_left() - BUILD_S) / step_s - 1)) if step_s > 0 else sz["steps"]
        need_s = step_s * (max(steps, 1) + 1) + BUILD_S
        if cand["predicted_peak_gib"] * GIB > capacity:
            cand["decision"] = f"skipped: predicted peak over the device's {capacity / GIB:.0f} GiB"
        elif (cand["predicted_peak_without_overhead_gib"] * GIB) > free:
            cand["decision"] = f"skipped: predicted peak over the {free / GIB:.0f} GiB free"
        elif sz["max_tokens"] and cand["tokens"] > sz["max_tokens"]:
            cand["decision"] = f"skipped: dry run takes at most {sz['max_tokens']} tokens"
        elif run is not None:
            cand["decision"] = "not needed: a longer sequence ran"
        elif need_s > budget.section_left():
            cand["decision"] = f"skipped: about {need_s:.0f} s needed, {budget.section_left():.0f} s left"
        else:
            try:
                run = train_steps(cfg, cand["patch_size"], device, max(steps, 1))
                cand["decision"] = "ran"
            except Exception as exc:  # noqa: BLE001 - out of memory: try the next shorter sequence
                cand["decision"] = f"failed: {first_line(exc)}"
                if not is_out_of_memory(exc):
                    cand["traceback"] = traceback.format_exc(limit=4)
                free_device_memory(device)
        print(
            f"{cand['patch_size']:>6}{cand['tokens']:>10}{cand['predicted_peak_gib']:>15.1f}"
            f"{cand['predicted_step_s']:>13.2f}  {cand['decision']}"
        )
    if run is None:
        raise RuntimeError("no sequence length of the config trained within memory and budget (see candidates)")
    cand = next(c for c in candidates if c["patch_size"] == run["patch_size"])
    step_s = statistics.median(run["step_s"])
    flops = cand["model_flops_per_step"]
    run.update(
        median_step_s=step_s,
        tokens_per_s=run["tokens"] / step_s,
        model_tflops=flops / step_s / 1e12,
        mfu_vs_matmul=flops / step_s / rate if rate else None,
        mfu_vs_datasheet=flops / step_s / machine.peak("bf16"),
        predicted_peak_gib=cand["predicted_peak_gib"],
        predicted_peak_without_overhead_gib=cand["predicted_peak_without_overhead_gib"],
    )
    if "peak_allocated_gib" in run:
        run["peak_vs_prediction_without_overhead"] = (
            run["peak_allocated_gib"] / cand["predicted_peak_without_overhead_gib"]
        )
    else:
        report.setdefault("gpu_only_skipped", []).append(
            "peak_allocated_gib: torch.cuda.max_memory_allocated needs a GPU (no allocator peak on the CPU)"
        )
    report["run"] = run
    mfu_matmul = f"{run['mfu_vs_matmul']:.1%}" if rate else "n/a"
    print(
        f"p{run['patch_size']}, {run['tokens']} tokens: {step_s:.3f} s/step, {run['tokens_per_s']:,.0f} tokens/s, "
        f"{run['model_tflops']:.1f} TFLOP/s, MFU {mfu_matmul} of the measured matmul rate, "
        f"{run['mfu_vs_datasheet']:.1%} of the datasheet"
    )
    if "peak_allocated_gib" in run:
        print(
            f"peak allocated {run['peak_allocated_gib']:.1f} GiB; seqvit.plan predicts "
            f"{cand['predicted_peak_without_overhead_gib']:.1f} GiB + runtime overhead = {cand['predicted_peak_gib']:.1f} GiB"
        )


# --- section 3: two ranks on one device -------------------------------------------------------

# what seqvit.parallel calls (lss: the *_single names where torch has them, else *_tensor) and the rest
COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_single",
    "all_gather_into_tensor",
    "reduce_scatter_single",
    "reduce_scatter_tensor",
    "all_to_all_single",
    "barrier",
)


def _run_collective(dist, name: str, base, world: int):
    """One collective on `base` (this rank's tensor); its result, None for a barrier."""
    if name == "barrier":
        dist.barrier()
        return None
    if name in ("all_reduce", "broadcast"):
        out = base.clone()
        if name == "all_reduce":
            dist.all_reduce(out)
        else:
            dist.broadcast(out, src=0)
        return out
    if name == "all_gather":
        parts = [torch.empty_like(base) for _ in range(world)]
        dist.all_gather(parts, base)
        return torch.cat(parts)
    if name in ("all_gather_single", "all_gather_into_tensor"):
        out = base.new_empty(world * base.numel())
    elif name in ("reduce_scatter_single", "reduce_scatter_tensor"):
        out = base.new_empty(base.numel() // world)
    else:  # all_to_all_single
        out = torch.empty_like(base)
    getattr(dist, name)(out, base)
    return out


def _probe_collectives(rank: int, world: int, device) -> dict:
    """Each collective on this device's tensors: runs, and gives the right numbers."""
    import warnings

    import torch.distributed as dist

    results = {}
    base = torch.arange(4 * world, dtype=torch.float32, device=device) + 100 * rank
    every = [torch.arange(4 * world, dtype=torch.float32, device=device) + 100 * r for r in range(world)]
    expected = {
        "all_reduce": sum(every),
        "broadcast": every[0],
        "all_gather": torch.cat(every),
        "all_gather_single": torch.cat(every),
        "all_gather_into_tensor": torch.cat(every),
        "reduce_scatter_single": sum(every).chunk(world)[rank],
        "reduce_scatter_tensor": sum(every).chunk(world)[rank],
        "all_to_all_single": torch.cat([t.chunk(world)[rank] for t in every]),
    }
    for name in COLLECTIVES:
        if name != "barrier" and not hasattr(dist, name):
            results[name] = {"runs": False, "error": f"torch {torch.__version__} has no torch.distributed.{name}"}
            continue
        try:
            with warnings.catch_warnings():  # torch deprecates some of these names in favour of others
                warnings.simplefilter("ignore", FutureWarning)
                out = _run_collective(dist, name, base, world)
            synchronize(device)
            correct = out is None or torch.equal(out.cpu(), expected[name].cpu())
            results[name] = {"runs": True, "correct": bool(correct)}
        except Exception as exc:  # noqa: BLE001 - what this backend refuses is the finding
            results[name] = {"runs": False, "error": first_line(exc)}
    return results


@contextlib.contextmanager
def _collective_devices(seen: dict):
    """Record the device type of the tensor every collective below is called on."""
    import torch.distributed as dist

    names = (
        "all_reduce",
        "all_gather_single",
        "all_gather_into_tensor",
        "reduce_scatter_single",
        "reduce_scatter_tensor",
        "all_to_all_single",
    )
    originals = {name: getattr(dist, name) for name in names if hasattr(dist, name)}

    def wrap(name, original):
        def recorded(*args, **kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            key = f"{name} on {','.join(sorted({t.device.type for t in tensors}))}"
            seen[key] = seen.get(key, 0) + 1
            return original(*args, **kwargs)

        return recorded

    for name, original in originals.items():
        setattr(dist, name, wrap(name, original))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def _relative(a, b) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def _sp_training(rank: int, world: int, device, method: str, cfg: dict) -> dict:
    """sp = world training steps of a small ForecastViT through seqvit.parallel, against one process."""
    from seqvit.model.vit import ForecastViT
    from seqvit.parallel import groups
    from seqvit.parallel.methods import sequence_parallel_attention
    from seqvit.parallel.step_share import StepShare

    # the step written out in plain torch.distributed, as the CPU tests compare it (tests/shard_steps.py)
    sys.path.insert(0, str(ROOT / "tests"))
    from shard_steps import average_gradients, replica_rows, segment, segment_loss

    def loss_fn(pred, target, weights):
        return ((pred - target) ** 2 * weights).mean()

    def make():
        torch.manual_seed(0)
        model = ForecastViT(
            2,
            2,
            cfg["grid"],
            embed_dim=cfg["dim"],
            depth=2,
            num_heads=cfg["heads"],
            mlp_ratio=2.0,
            attention_backend="sdpa",
        )
        torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would zero every other gradient
        return model.to(device)

    import inspect

    # the training device goes to build_groups where this checkout's version takes it (ProcessGrid.device)
    pinned = {"device": device} if "device" in inspect.signature(groups.build_groups).parameters else {}
    layout = groups.build_groups(world, **pinned)
    single, parallel = make(), make()
    n = single.num_tokens
    gen = torch.Generator().manual_seed(1)
    batch = 2
    x = torch.randn(batch, 2, n, 4, generator=gen).to(device)
    y = torch.randn(batch, 2, n, 4, generator=gen).to(device)
    lead = torch.tensor([6.0, 24.0], device=device)
    weights = (torch.rand(n, 4, generator=gen) + 0.5).to(device)
    parallel.set_attention_backend(sequence_parallel_attention(method, layout.sp_group, n, cfg["heads"], "sdpa"))
    shard = StepShare.of(layout, n, batch, weights)
    lr = 0.05  # plain SGD, written out: torch.optim's first use imports torch._dynamo (seconds per process)
    seen: dict = {}
    result: dict = {"tokens": n, "segment": [shard.start, shard.stop], "losses_single": [], "losses_sp": []}
    for step in range(cfg["steps"]):
        for model in (single, parallel):
            model.zero_grad(set_to_none=True)
        reference = single(x, lead)
        ref_loss = loss_fn(reference, y - x, weights)
        ref_loss.backward()
        with _collective_devices(seen):
            xs, leads, ys = replica_rows(shard, x, lead, y)
            loss = segment_loss(shard, parallel, xs, leads, ys, loss_fn)
            loss.backward()
            global_loss = average_gradients(shard, parallel.parameters(), loss)
        if step == 0:
            with torch.no_grad(), _collective_devices(seen):
                out = parallel(*segment(shard, xs), leads, token_offset=shard.start)
            rows = replica_rows(shard, reference)[0][:, :, shard.start : shard.stop]
            result["output_rel_error"] = _relative(out.detach(), rows.detach())
            grads = {
                k: _relative(p.grad, dict(single.named_parameters())[k].grad) for k, p in parallel.named_parameters()
            }
            result["grad_rel_error"] = max(grads.values())
            result["worst_grad"] = max(grads, key=grads.get)
        result["losses_single"].append(ref_loss.item())
        result["losses_sp"].append(global_loss)
        with torch.no_grad():
            for model in (single, parallel):
                for param in model.parameters():
                    param -= lr * param.grad
    result["loss_rel_error"] = max(abs(a - b) / abs(b) for a, b in zip(result["losses_sp"], result["losses_single"]))
    result["param_rel_error"] = max(
        _relative(p.detach(), q.detach()) for p, q in zip(parallel.parameters(), single.parameters())
    )
    result["collectives"] = seen
    return result


def _two_rank_worker(rank: int, world: int, device_type: str, cfg: dict) -> dict:
    import torch.distributed as dist

    device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # both ranks on the one GPU
    out: dict = {
        "backend": dist.get_backend(),
        "device": str(device),
        "collectives": _probe_collectives(rank, world, device),
    }
    out["sp2"] = {}
    for method in ("ulysses", "lss"):
        try:
            out["sp2"][method] = _sp_training(rank, world, device, method, cfg)
        except Exception as exc:  # noqa: BLE001 - both ranks fail alike (same device, same backend)
            out["sp2"][method] = {"error": first_line(exc), "traceback": traceback.format_exc(limit=4)}
    return out


def _nccl_worker(rank: int, world: int) -> str:
    import torch.distributed as dist

    tensor = torch.ones(4, device="cuda")
    dist.all_reduce(tensor)
    torch.cuda.synchronize()
    return f"all_reduce returned {tensor.tolist()}"


def section_two_ranks(args, sz, device, budget: Budget, report: dict) -> None:
    from seqvit.parallel.spawn import spawn

    if device.type == "cuda":
        try:
            values = spawn(_nccl_worker, 2, backend="nccl", timeout_s=min(90.0, 0.4 * budget.section_left()))
            report["nccl"] = {"permits_two_ranks_on_one_gpu": True, "answer": values[0]}
        except Exception as exc:  # noqa: BLE001 - the expected refusal is the finding
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            report["nccl"] = {
                "permits_two_ranks_on_one_gpu": False,
                "answer": (" / ".join(lines[-3:]) if lines else repr(exc))[:600],  # the traceback's last lines
            }
        print(f"NCCL, two ranks on one GPU: {report['nccl']['answer']}")
    else:
        report.setdefault("gpu_only_skipped", []).append("nccl: NCCL needs GPUs; two CPU ranks use gloo only")
    cfg = {"grid": sz["sp_grid"], "dim": sz["sp_dim"], "heads": sz["sp_heads"], "steps": sz["sp_steps"]}
    # at least a minute: two processes start CUDA and gloo even when earlier sections used the budget up
    values = spawn(_two_rank_worker, 2, device.type, cfg, backend="gloo", timeout_s=max(60.0, budget.section_left()))
    report["gloo"] = values[0]["collectives"]
    report["gloo_ranks_agree"] = values[0]["collectives"] == values[1]["collectives"]
    report["gloo_device"] = values[0]["device"]
    report["sp2"] = {method: [value["sp2"][method] for value in values] for method in values[0]["sp2"]}
    supported = [name for name, r in report["gloo"].items() if r["runs"] and r.get("correct", True)]
    report["gloo_supports"] = supported
    trained = [m for m, per_rank in report["sp2"].items() if not any("error" in r for r in per_rank)]
    nccl = report.get("nccl", {}).get("permits_two_ranks_on_one_gpu")
    report["two_ranks_on_one_device"] = (
        f"gloo carries sp=2 training for {', '.join(trained)}"
        if trained
        else "no backend permits it: " + ("NCCL refused and " if nccl is False else "") + "gloo failed every sp=2 run"
    )
    print(f"two ranks on one {device.type} device: {report['two_ranks_on_one_device']}")
    print(f"gloo on {report['gloo_device']} tensors carries: {', '.join(supported) or 'nothing'}")
    for name, r in report["gloo"].items():
        if not r["runs"]:
            print(f"  {name}: {r['error']}")
    for method, per_rank in report["sp2"].items():
        for rank, r in enumerate(per_rank):
            if "error" in r:
                print(f"  sp=2 {method}, rank {rank}: {r['error']}")
            else:
                print(
                    f"  sp=2 {method}, rank {rank}: output {r['output_rel_error']:.1e}, gradients {r['grad_rel_error']:.1e}, "
                    f"losses {r['loss_rel_error']:.1e}, weights after {len(r['losses_sp'])} steps "
                    f"{r['param_rel_error']:.1e} (relative to one process); collectives {r['collectives']}"
                )


# --- main -------------------------------------------------------------------------------------


def write_json(out_dir: Path, report: dict) -> Path:
    path = out_dir / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)
    return path


def pick_device(wanted: str) -> torch.device:
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU; use --device auto or cpu")
    return torch.device("cuda", torch.cuda.current_device())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json (created)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: seconds, on the CPU where there is no GPU")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 400, dry run 120)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--config", default=str(ROOT / "config" / "frontier-seqscale.yaml"))
    parser.add_argument(
        "--machine", default="auto", help="machine file for the datasheet peak (auto: h200, frontier on ROCm)"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    sections = [s.strip().replace("-", "_") for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; use {','.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in sections]
    budget = Budget(args.budget_s if args.budget_s is not None else (120.0 if args.dry_run else 400.0))
    device = pick_device(args.device)
    sz = sizes(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "script": "benchmarks/gpu_check.py",
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "budget_s": budget.end - budget.start,
        "environment": environment(device),
        "sizes": sz,
        "sections": {},
    }
    if device.type != "cuda":
        report["gpu_only_skipped"] = ["every timing is of the CPU: the figures check the script, not a GPU"]
    print(f"{report['environment']['device_info']}, torch {torch.__version__}, budget {report['budget_s']:.0f} s")
    runners = {
        "kernels": lambda out: section_kernels(args, sz, device, budget, out),
        "training": lambda out: section_training(
            args, sz, device, budget, out, report["sections"].get("kernels", {}).get("matmul")
        ),
        "two_ranks": lambda out: section_two_ranks(args, sz, device, budget, out),
    }
    for name in sections:
        print(f"\n== {name} ==")
        budget.open_section(name, sections)
        out: dict = {"status": "running"}
        report["sections"][name] = out
        started = time.monotonic()
        try:
            runners[name](out)
            out["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others
            out.update(status="failed", error=first_line(exc), traceback=traceback.format_exc(limit=6))
            print(f"section {name} failed: {first_line(exc)}")
        out["seconds"] = time.monotonic() - started
        for note in out.pop("gpu_only_skipped", []):
            report.setdefault("gpu_only_skipped", []).append(f"{name}: {note}")
        free_device_memory(device)
        report["elapsed_s"] = budget.elapsed()
        write_json(args.out, report)
    path = write_json(args.out, report)
    print(f"\n{path} ({budget.elapsed():.0f} s)")
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
