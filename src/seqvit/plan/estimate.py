"""Memory, FLOPs and time of one training step of one rank, from the config alone (nothing runs).

Notation: B global batch, D data-parallel replicas, P sequence-parallel ranks, W = P x D, b = B /
D / grad_accumulation the micro-batch, N tokens of a sample, n = ceil(N / P) tokens of a rank, E
embed_dim, F = int(E * mlp_ratio), H heads, C channels, a bytes per activation (bf16: 2, fp32: 4),
Phi parameters.

Memory (bytes per rank):
  weights, gradients     a Phi each (DeepSpeed bf16 keeps the model in bf16)
  optimizer (AdamW)      bf16: fp32 master weights, m and v (12 Phi); fp32: m and v (8 Phi)
  ZeRO                   stage >= 1 divides the optimizer by W, >= 2 the gradients, 3 the weights:
                         DeepSpeed is given no model-parallel unit, so it partitions over all W ranks
  activations per block  saved for the backward pass, per micro-batch:
                         b a (7 n E + kv + 2 n F) + 4 b n H (the kernel's softmax statistics, fp32)
                         [layer-norm inputs 2, qkv input 1, q 1, kernel output 1, proj input 1,
                         fc1 input 1 (x nE); GELU input and output (2 x nF); K and V as the kernel
                         reads them, kv = 2 N E under LSS (the whole gathered sequence), else 2 n E]
                         math kernel: + b H n N (4 + a), the fp32 softmax and its bf16 copy
                         activation checkpointing keeps only each block's input (b n E a) and
                         recomputes one block at a time in the backward pass
  embedding and head     per-channel embeddings b C n E a (the aggregation's input) and the
                         tokens, targets and output b C n p^2 (3 a); not checkpointed
  attention working set  backward of one block's kernel: dQ, dK, dV, b a (n E + kv); math adds the
                         gradient of the N-wide scores, b H n N (4 + a)
  sequence parallel      Ulysses: send and receive buffers of the fused q, k, v all-to-all,
                         2 x 3 b n E a; LSS: the gathered K and V are copied into the kernel's
                         layout (forward) and dK, dV back into the reduce-scatter's (backward),
                         2 b N E a more
  position table         the fixed sin-cos table of all N tokens, N E a on every rank (vit.py
                         registers the whole table; DeepSpeed casts buffers to bf16)
  runtime overhead       from the machine file
  peak = persistent + saved activations + one block's recomputation (checkpointing) + working
         set + sequence-parallel buffers: the backward pass of a block, where everything meets

Time: model FLOPs of a step on one rank (seqvit.train.throughput, PaLM's definition) plus one
more forward of the blocks under checkpointing, over peak x efficiency; plus the collectives,
not overlapped with compute (an upper bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from seqvit.errors import SeqvitError
from seqvit.plan.machine import Machine
from seqvit.train.throughput import forward_flops_by_part, model_flops_per_sample

BYTES = {"bf16": 2, "fp32": 4}
HEAD_SCATTERING = ("ulysses", "deepspeed-ulysses")


@dataclass(frozen=True)
class RunShape:
    """Everything the estimate needs about one run (one patch size)."""

    patch_size: int
    channels: int
    tokens: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    attention: str
    batch_size: int
    grad_accumulation: int
    zero_stage: int
    precision: str
    activation_checkpointing: bool
    sp: int
    dp: int
    sp_method: str

    @property
    def world(self) -> int:
        return self.sp * self.dp

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.dp // self.grad_accumulation

    @property
    def local_tokens(self) -> int:
        return math.ceil(self.tokens / self.sp)

    @property
    def hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def check(self) -> None:
        where = f"run p={self.patch_size}"
        if self.batch_size % self.dp:
            raise SeqvitError(
                f"{where}: train.batch_size {self.batch_size} is not divisible by the {self.dp} data-parallel "
                f"replicas (parallel.dp or parallel.runs.{self.patch_size}.dp); make it a multiple"
            )
        if (self.batch_size // self.dp) % self.grad_accumulation:
            raise SeqvitError(
                f"{where}: train.grad_accumulation {self.grad_accumulation} does not divide the "
                f"{self.batch_size // self.dp} samples of each replica; use a divisor of it"
            )
        if self.precision not in BYTES:
            raise SeqvitError(f"{where}: train.precision {self.precision!r}; use one of {', '.join(BYTES)}")
        if self.sp > 1 and self.sp_method in HEAD_SCATTERING and self.num_heads % self.sp:
            raise SeqvitError(
                f"{where}: parallel.sp_method {self.sp_method} needs sp ({self.sp}) to divide model.num_heads "
                f"({self.num_heads}); use parallel.sp_method=lss or an sp that divides the heads"
            )


def run_shape(cfg: dict, patch_size: int) -> RunShape:
    """The RunShape of config `cfg` for one patch size (grid, channels and parallel layout from the config)."""
    from seqvit.data.fields import channel_names
    from seqvit.data.grids import named_grid
    from seqvit.patches import check_patch_size
    from seqvit.runs import run_config, run_parallelism

    cfg = run_config(cfg, patch_size)
    grid = named_grid(cfg["grid"]).shape
    check_patch_size(grid, patch_size)
    model, train, parallel = cfg["model"], cfg["train"], cfg.get("parallel") or {}
    sp, dp = run_parallelism(cfg, patch_size)
    shape = RunShape(
        patch_size=int(patch_size),
        channels=len(channel_names(cfg)),
        tokens=(grid[0] // patch_size) * (grid[1] // patch_size),
        embed_dim=int(model["embed_dim"]),
        depth=int(model["depth"]),
        num_heads=int(model["num_heads"]),
        mlp_ratio=float(model.get("mlp_ratio", 4)),
        attention=str(model.get("attention", "sdpa")),
        batch_size=int(train["batch_size"]),
        grad_accumulation=int(train.get("grad_accumulation", 1)),
        zero_stage=int(train.get("zero_stage", 0)),
        precision=str(train.get("precision", "fp32")),
        activation_checkpointing=bool(train.get("activation_checkpointing", False)),
        sp=sp,
        dp=dp,
        sp_method=str(parallel.get("sp_method", "ulysses")),
    )
    shape.check()
    return shape


def parameter_count(shape: RunShape) -> int:
    """Parameters of ForecastViT (model/vit.py) for this shape, module by module."""
    c, e, f, pp = shape.channels, shape.embed_dim, shape.hidden, shape.patch_size**2
    patch_embedding = c * pp * e + c * e
    channel_embedding = c * e
    aggregation = e + e * e + (e * e + e) + (e * e + e)  # query, key (no bias), value, out
    lead = e + e
    block = 2 * e + (3 * e * e + 3 * e) + (e * e + e) + 2 * e + (e * f + f) + (f * e + e)
    head = 2 * e + e * c * pp + c * pp  # final norm, linear head
    return patch_embedding + channel_embedding + aggregation + lead + shape.depth * block + head


@dataclass
class Plan:
    shape: RunShape
    machine: Machine
    params: int
    memory: dict = field(default_factory=dict)  # part -> bytes at the peak
    flops: dict = field(default_factory=dict)
    comm: dict = field(default_factory=dict)  # kind -> seconds per step
    compute_seconds: float = 0.0

    @property
    def peak(self) -> float:
        return sum(self.memory.values())

    @property
    def capacity(self) -> float:
        return self.machine.memory

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity

    @property
    def step_seconds(self) -> float:
        return self.compute_seconds + sum(self.comm.values())

    @property
    def tokens_per_s(self) -> float:
        """Tokens of the global batch per second (each sample's tokens counted once)."""
        return self.shape.batch_size * self.shape.tokens / self.step_seconds

    @property
    def mfu(self) -> float:
        return self.flops["model_per_rank"] / self.step_seconds / self.machine.peak(self.shape.precision)


def _kv_elements(s: RunShape) -> int:
    """Elements of K and V (one sample) as the local attention kernel reads them."""
    kv_tokens = s.tokens if (s.sp > 1 and s.sp_method == "lss") else s.local_tokens
    return 2 * kv_tokens * s.embed_dim


def memory_breakdown(s: RunShape, machine: Machine, params: int) -> dict:
    a = BYTES[s.precision]
    b, n, e, f, h = s.micro_batch, s.local_tokens, s.embed_dim, s.hidden, s.num_heads
    w = s.world
    weights, grads = float(a * params), float(a * params)
    optimizer = float((12 if s.precision == "bf16" else 8) * params)
    if s.zero_stage >= 1:
        optimizer /= w
    if s.zero_stage >= 2:
        grads /= w
    if s.zero_stage >= 3:
        # the partition, plus one block's weights gathered at a time
        block_params = (params - parameter_count(replace(s, depth=0))) / max(s.depth, 1)
        weights = weights / w + a * block_params
    kv = _kv_elements(s)
    math_scores = b * h * n * s.tokens * (4 + a) if s.attention == "math" else 0
    full_block = b * a * (7 * n * e + kv + 2 * n * f) + 4 * b * n * h + math_scores
    if s.activation_checkpointing:
        saved = s.depth * b * n * e * a
        recompute = full_block
    else:
        saved = s.depth * full_block
        recompute = 0
    pp = s.patch_size**2
    embed_head = b * s.channels * n * e * a + 3 * b * s.channels * n * pp * a + 3 * b * n * e * a
    working = b * a * (n * e + kv) + math_scores
    if s.sp > 1 and s.sp_method in HEAD_SCATTERING:
        sp_buffers = 2 * 3 * b * n * e * a
    elif s.sp > 1:
        sp_buffers = 2 * b * s.tokens * e * a
    else:
        sp_buffers = 0
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "activations (saved)": saved + embed_head,
        "block recompute": recompute,
        "attention working set": working,
        "sequence-parallel buffers": sp_buffers,
        "position table": s.tokens * e * a,
        "runtime overhead": machine.overhead,
    }


def communication(s: RunShape, machine: Machine, params: int) -> dict:
    """Seconds per step of each kind of collective on one rank."""
    a = BYTES[s.precision]
    b, n, e = s.micro_batch, s.local_tokens, s.embed_dim
    micro = s.grad_accumulation
    forwards = 2 if s.activation_checkpointing else 1  # recomputation repeats the forward exchange
    comm = {"all-to-all": 0.0, "all-gather": 0.0, "reduce-scatter": 0.0, "gradient all-reduce": 0.0}
    if s.sp > 1 and s.sp_method in HEAD_SCATTERING:
        qkv = machine.collective_seconds("all_to_all", s.sp, 3 * b * n * e * a)
        out = machine.collective_seconds("all_to_all", s.sp, b * n * e * a)
        comm["all-to-all"] = s.depth * micro * ((forwards + 1) * (qkv + out))
    elif s.sp > 1:
        segment = 2 * b * n * e * a  # this rank's K and V
        comm["all-gather"] = s.depth * micro * forwards * machine.collective_seconds("all_gather", s.sp, segment)
        comm["reduce-scatter"] = s.depth * micro * machine.collective_seconds("reduce_scatter", s.sp, segment)
    grads = a * params
    if s.zero_stage <= 1:
        comm["gradient all-reduce"] = machine.collective_seconds("all_reduce", s.world, grads)
    else:
        # reduce-scatter of the gradients every micro-batch, all-gather of the updated weights
        shard = grads / s.world
        comm["gradient all-reduce"] = micro * machine.collective_seconds("reduce_scatter", s.world, shard)
        comm["gradient all-reduce"] += machine.collective_seconds("all_gather", s.world, shard)
        if s.zero_stage == 3:  # weights gathered in the forward and the backward of every micro-batch
            comm["all-gather"] += 2 * micro * machine.collective_seconds("all_gather", s.world, shard)
    return comm


def plan_run(s: RunShape, machine: Machine) -> Plan:
    params = parameter_count(s)
    model_cfg = {"embed_dim": s.embed_dim, "depth": s.depth, "num_heads": s.num_heads, "mlp_ratio": s.mlp_ratio}
    per_sample = model_flops_per_sample(model_cfg, s.channels, s.patch_size, s.tokens)
    # each sample is shared by the P ranks of its group; a replica runs B / D samples per step
    model_per_rank = per_sample * s.batch_size / s.dp / s.sp
    executed = model_per_rank
    if s.activation_checkpointing:
        parts = forward_flops_by_part(model_cfg, s.channels, s.patch_size, s.tokens)
        executed += (parts["block_linear"] + parts["attention"]) * s.batch_size / s.dp / s.sp
    plan = Plan(shape=s, machine=machine, params=params)
    plan.flops = {"model_per_sample": per_sample, "model_per_rank": model_per_rank, "executed_per_rank": executed}
    plan.compute_seconds = executed / (machine.peak(s.precision) * machine.efficiency)
    plan.comm = communication(s, machine, params)
    plan.memory = memory_breakdown(s, machine, params)
    return plan


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def cheapest_fix(s: RunShape, machine: Machine, max_sp: int | None = None) -> tuple[str, Plan] | None:
    """The first change, in order of cost, that makes the run fit: (description, its plan), or None.

    Order: activation checkpointing on; more gradient accumulation (down to micro-batch 1);
    a higher ZeRO stage; a larger sp (Ulysses where the heads allow it, it gathers no sequence);
    more data-parallel replicas (more nodes). Each keeps the earlier changes.
    """
    candidates = []
    current = s
    if not current.activation_checkpointing:
        current = replace(current, activation_checkpointing=True)
        candidates.append(current)
    replica = current.batch_size // current.dp
    candidates += [replace(current, grad_accumulation=acc) for acc in _divisors(replica) if acc > s.grad_accumulation]
    current = replace(current, grad_accumulation=max(replica, s.grad_accumulation))
    candidates += [replace(current, zero_stage=stage) for stage in range(current.zero_stage + 1, 4)]
    current = replace(current, zero_stage=3)
    if current.sp > 1 and current.sp_method not in HEAD_SCATTERING:
        candidates.append(replace(current, sp_method="ulysses"))
    sp = current.sp * 2
    while sp <= min(max_sp or current.tokens, current.tokens):
        method = "ulysses" if current.num_heads % sp == 0 else current.sp_method
        candidates.append(replace(current, sp=sp, sp_method=method))
        sp *= 2
    for dp in _divisors(current.batch_size):
        if dp > current.dp:  # more replicas at micro-batch 1: the same global batch on more nodes
            candidates.append(replace(current, dp=dp, grad_accumulation=current.batch_size // dp))
    for candidate in candidates:
        try:
            candidate.check()
        except SeqvitError:
            continue  # e.g. Ulysses with an sp that does not divide the heads
        plan = plan_run(candidate, machine)
        if plan.fits:
            return _describe(s, candidate), plan
    return None


def _describe(before: RunShape, after: RunShape) -> str:
    """The keys that differ between two shapes, as --set options."""
    keys = {
        "activation_checkpointing": "train.activation_checkpointing",
        "grad_accumulation": "train.grad_accumulation",
        "zero_stage": "train.zero_stage",
        "sp_method": "parallel.sp_method",
    }
    parts = []
    for attr, key in keys.items():
        old, new = getattr(before, attr), getattr(after, attr)
        if old != new:
            value = str(new).lower() if isinstance(new, bool) else new
            parts.append(f"--set {key}={value}")
    if (after.sp, after.dp) != (before.sp, before.dp):
        nodes = f"{after.world} ranks instead of {before.world}"
        parts.append(f"and parallel.runs.{before.patch_size}: {{sp: {after.sp}, dp: {after.dp}}} ({nodes})")
    return " ".join(parts)
