"""Memory, FLOPs and time of one training step of one rank, from the config alone (nothing runs).

Notation: B global batch, D data-parallel replicas, P sequence-parallel ranks, W = P x D, b = B /
D / grad_accumulation the micro-batch, N tokens of a sample, n = ceil(N / P) tokens of a rank, E
embed_dim, F = int(E * mlp_ratio), H heads, C channels, p^2 pixels per patch, a bytes per
activation (bf16: 2, fp32: 4), Phi parameters, c the head chunks of LSS (parallel/lss.py), I =
parallel.sp_inner the inner Ulysses ranks of the two-level methods and O = P / I their outer ranks
(one-level: I = 1, O = P), w the window size of window attention (sp = 1 only).

Memory (bytes per rank): persistent state, plus the activations saved for the backward pass,
plus what the backward pass holds at its fullest moment. The counts follow the tensors the code
keeps (read with torch's profiler and autograd's saved-tensor hooks) and are checked against
measured training processes (benchmarks/plan_validation.py, docs/plan-validation.md).
  weights, gradients     a Phi each (DeepSpeed bf16 keeps the model in bf16; its bf16 optimizer also
                         accumulates gradients in fp32, 4 Phi more)
  optimizer (AdamW)      m and v (8 Phi); with bf16 or any ZeRO stage DeepSpeed also keeps fp32
                         master weights (12 Phi). ZeRO stage >= 1 divides the optimizer by W, >= 2 the
                         gradients, 3 the weights: DeepSpeed is given no model-parallel unit, so it
                         partitions over all W ranks
  ZeRO reduce bucket     stages 1-3 allocate DeepSpeed's reduce bucket (reduce_bucket_size, 5e8
                         elements by default, of gradients); in host memory only the gradients that
                         pass through it are ever written (machine key memory_on_touch)
  position tables        the sin-cos position table's row and column halves, (rows + cols) E / 2
                         (model/vit.py builds each rank's positions from them)
  inputs                 the replica's tokens and targets, fp32 as the loader delivers them
  embedding (saved)      b n a (C p^2 + 2 C E + H E + H C + E): the tokens' layout copy, the C channel
                         embeddings and the aggregation's layout copy of them, its H-head mixture,
                         the softmax weights and the output projection's input
  blocks (saved)         per block b n a (8 E + 2 F) + 4 b n H [block input, norm1 output, q k v,
                         kernel output, norm2 input and output (E each, q k v 3 E); GELU input and
                         output (F each); the kernel's fp32 softmax statistics]. Both Ulysses
                         methods keep the kernel's output and the projection's input apart (+ E;
                         DeepSpeed's measured 2 E more at P = 2, none more at P = 4); LSS the
                         gathered K and V of the whole sequence (+ 2 N E / n = 2 P E per local
                         token; two-level: 2 N E / I, H / I heads at O ranks) and the two-level
                         methods Ulysses' E; ring its fp32 output (4 n E bytes; q, k, v and the
                         lse as above); the math kernel adds the N-wide scores, b H n N (4 + a)
                         (N -> w^2 under window attention; none under ring)
                         activation checkpointing keeps each block's input (b n E a) and
                         recomputes one block at a time in the backward pass
  backward working set   the largest of three moments: the last block's MLP backward (its GELU
                         gradient and the residual gradient, b n a (F + E)); its attention
                         backward, after the MLP's tensors are freed (b n a (E - 2 F), plus the
                         kernel's dK and dV and, under LSS, the reduce-scatter's buffer of one chunk
                         of heads, b a 2 N E / c (1 + s / a), s = 4 bytes: bf16 gradients are summed
                         in fp32; under ring instead two K/V blocks 4 b n E a, one fp32 block of
                         scores and probabilities 2 b (H / I) (I n)^2 4, the travelling fp32 dK/dV
                         16 b n E and dq 4 b n E; the two-level methods' inner dK/dV buffer 2 b n E a;
                         the math kernel's score gradient); the channel aggregation's
                         backward (b n a C E) once the blocks are freed
  runtime overhead       from the machine file (runtime_overhead_gb, + zero_overhead_gb for ZeRO,
                         + precision_overhead_gb)
  peak = persistent + saved activations + the working set

Time: the matmul FLOPs of a step on one rank (seqvit.train.throughput, PaLM's definition, plus one
more forward of the blocks under checkpointing) over peak x efficiency; attention's FLOPs over the
machine's attention rate (attention_tflops, the kernel's measured forward + backward); the
elementwise traffic (elementwise_traffic: 4 passes over the activations saved, their writing and
reading and their gradients', plus the optimizer's reads and writes) over elementwise_gbs
(measured on the model's own layer norms, GELUs, copies and small matmuls); the framework's own
time per step and per block (framework_overhead_ms); on CPU machines the ranks of a node beyond
cores_per_node share the cores. Ring attention is not the fused kernel: its FLOPs go at the fp32
matmul rate, plus its softmax's fp32 traffic (ring_softmax_traffic) where elementwise_gbs is known.
Plus the collectives, not overlapped with compute (an upper bound): all-to-all over the Ulysses
ranks (P, or I), LSS's all-gather and reduce-scatter and ring's hops over the outer ranks
(outer_seconds: the links of the level spanning the P ranks; a hop at the level's own figures). The CPU figures are measured by `seqvit plan --calibrate`; a device machine file without
them keeps everything in peak x efficiency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from seqvit.errors import SeqvitError
from seqvit.plan.machine import Machine
from seqvit.train.throughput import forward_flops_by_part, model_flops_per_sample

BYTES = {"bf16": 2, "fp32": 4}
HEAD_SCATTERING = ("ulysses", "deepspeed-ulysses")
TWO_LEVEL = ("ulysses-lss", "ulysses-ring")


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
    patch_rows: int = 0  # the patch grid, rows x cols = tokens; 0: unknown (a 1:2 latitude-longitude grid assumed)
    patch_cols: int = 0
    threads: int = 1  # train.threads: CPU threads of training on one machine, shared by its ranks
    sp_inner: int = 1  # parallel.sp_inner: the inner Ulysses group of the two-level methods
    attention_pattern: str = "full"  # model.attention_pattern
    window_size: int = 0  # model.window_size (tokens per side of a window)
    uneven: str = "error"  # parallel.uneven

    @property
    def inner(self) -> int:
        """Ranks of the Ulysses all-to-all before the outer method (1: no inner level)."""
        return self.sp_inner if (self.sp > 1 and self.sp_method in TWO_LEVEL) else 1

    @property
    def outer(self) -> int:
        """Ranks of the K/V exchange (LSS or ring) after the inner level; the whole group for one-level methods."""
        return self.sp // self.inner

    @property
    def outer_method(self) -> str:
        """What the ranks of the outer level run: ulysses (head scattering), lss or ring; none at sp = 1."""
        if self.sp == 1:
            return "none"
        return "ulysses" if self.sp_method in HEAD_SCATTERING else self.sp_method.split("-")[-1]

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

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        if self.patch_rows * self.patch_cols == self.tokens:
            return self.patch_rows, self.patch_cols
        rows = max(1, math.isqrt(self.tokens // 2))
        return rows, math.ceil(self.tokens / rows)

    @property
    def head_chunks(self) -> int:
        """Chunks of heads LSS gathers in turn (parallel/lss.py); 1 for the other methods."""
        from seqvit.parallel.lss import head_chunks

        # two-level: the outer LSS sees H / I heads on sp / I ranks (parallel/two_level.py)
        return head_chunks(self.num_heads // self.inner, self.outer) if self.outer_method == "lss" else 1

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
        from seqvit.model.window import check_window
        from seqvit.parallel.groups import check_layout

        try:
            check_layout(
                num_tokens=self.tokens,
                num_heads=self.num_heads,
                sp=self.sp,
                method=self.sp_method,
                world_size=self.world,
                batch_size=self.batch_size,
                uneven=self.uneven,
                sp_inner=self.sp_inner,
            )
            if self.attention_pattern == "window":
                check_window(*self.grid, self.window_size)
        except SeqvitError as exc:
            raise SeqvitError(f"{where}: {exc}") from exc
        if self.attention_pattern == "window" and self.sp > 1:  # as train/engine.py refuses it
            raise SeqvitError(
                f"{where}: model.attention_pattern: window runs in one process per sample, but parallel.sp is "
                f"{self.sp}; set parallel.sp: 1 (also in parallel.runs) or model.attention_pattern: full"
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
        patch_rows=grid[0] // patch_size,
        patch_cols=grid[1] // patch_size,
        threads=int(train.get("threads", 1)),
        sp_inner=int(parallel.get("sp_inner", 1)),
        attention_pattern=str(model.get("attention_pattern", "full")),
        window_size=int(model.get("window_size") or 0),
        uneven=str(parallel.get("uneven", "error")),
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
    compute: dict = field(default_factory=dict)  # part -> seconds per step; they sum to compute_seconds

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
        """Model FLOP/s of a rank over the peak of what it computes on (on a CPU machine file, the
        one-core peak times the cores the rank gets: compute_share)."""
        s = self.shape
        on_node = min(s.world, self.machine.devices_per_node)
        share = self.machine.compute_share(on_node, max(1, s.threads // on_node))
        return self.flops["model_per_rank"] / self.step_seconds / (self.machine.peak(s.precision) * share)


# DeepSpeed's zero_optimization.reduce_bucket_size default (elements); train/engine.py does not set it
DEEPSPEED_REDUCE_BUCKET = 500_000_000
# per local token and block, in units of E: what the Ulysses methods keep beyond P = 1 (the kernel's
# output and the projection's input are two tensors after the all-to-all; measured the same for
# DeepSpeed's at P = 4, 2 E more at P = 2)
SP_SAVED = {"ulysses": 1, "deepspeed-ulysses": 1, "ulysses-lss": 1, "ulysses-ring": 1}
SUM_BYTES = 4  # LSS sums bf16 gradients in fp32 (parallel/lss.py); ring sends dK/dV in fp32
RING_BYTES = 4  # ring attention computes its blocks, output and dq in fp32 (parallel/ring.py)
# passes over a block of fp32 scores in ring attention's forward and backward, counted from its block
# loop (parallel/ring.py): forward scores, max, shift and exp, sum, weights x V; backward the
# recomputed probabilities, dO V^T, less delta, times the probabilities, and the three matmuls' reads
RING_SOFTMAX_PASSES = (6, 14)


def _lss(s: RunShape) -> bool:
    return s.outer_method == "lss"


def _ring(s: RunShape) -> bool:
    return s.outer_method == "ring"


def _block_saved(s: RunShape) -> float:
    """Bytes one block saves for its backward pass (its input included), per micro-batch."""
    a, b, n, e, f, h = BYTES[s.precision], s.micro_batch, s.local_tokens, s.embed_dim, s.hidden, s.num_heads
    per_token = float(8 * e + 2 * f)
    if s.sp > 1:
        per_token += SP_SAVED.get(s.sp_method, 0) * e
    if _lss(s):
        per_token += 2 * s.tokens * e / s.inner / n  # K and V of the whole sequence (of H / I heads when two-level)
    if _ring(s):
        per_token += RING_BYTES * e / a  # its output in fp32 (q, k, v and the lse as for the kernel)
    return b * n * a * per_token + 4 * b * n * h + _math_scores(s)


def _embedding_saved(s: RunShape) -> float:
    """Bytes the patch embedding and channel aggregation save for the backward pass, per micro-batch."""
    a, b, n, e, h, c = BYTES[s.precision], s.micro_batch, s.local_tokens, s.embed_dim, s.num_heads, s.channels
    return b * n * a * (c * s.patch_size**2 + 2 * c * e + h * e + h * c + e)


def _math_scores(s: RunShape) -> float:
    """The scores the math kernel keeps (fp32 softmax and its copy), per block and micro-batch: N wide,
    or a window's w^2 keys under window attention; none under ring, which bypasses the kernel."""
    if s.attention != "math" or _ring(s):
        return 0.0
    keys = s.window_size**2 if s.attention_pattern == "window" else s.tokens
    return s.micro_batch * s.num_heads * s.local_tokens * keys * (4 + BYTES[s.precision])


def _ring_working_set(s: RunShape) -> float:
    """Bytes ring attention's backward holds beyond its saved tensors: the K/V block in hand and the one
    arriving, one block of scores and probabilities over the outer block of I n tokens and H / I heads
    (fp32), the travelling dK/dV and dq (fp32)."""
    a, b, n, e = BYTES[s.precision], s.micro_batch, s.local_tokens, s.embed_dim
    blocks = 2 * 2 * b * n * e * a
    scores = 2 * b * (s.num_heads // s.inner) * (s.inner * n) ** 2 * RING_BYTES
    return blocks + scores + 2 * 2 * b * n * e * SUM_BYTES + b * n * e * RING_BYTES


def _working_set(s: RunShape, blocks: float) -> dict:
    """Bytes the backward pass holds beyond all saved activations, at each of its fullest moments.

    blocks: what the blocks hold when the backward pass reaches them (saved, plus the recomputed
    block under checkpointing); all of it is freed before the channel aggregation's backward.
    """
    a, b, n, e, f, c = BYTES[s.precision], s.micro_batch, s.local_tokens, s.embed_dim, s.hidden, s.channels
    kv_tokens = s.tokens // s.inner if _lss(s) else n  # two-level LSS gathers the whole sequence at E / I wide
    chunk = b * 2 * kv_tokens * e / s.head_chunks  # dK and dV of one chunk of heads
    exchange = chunk * (SUM_BYTES if _lss(s) else a)  # LSS: the reduce-scatter's buffer, summed in fp32
    attention = chunk * a + exchange
    if _ring(s):
        attention = _ring_working_set(s)
    if s.inner > 1:
        attention += 2 * b * n * e * a  # the inner all-to-all's dK/dV buffer, as for Ulysses
    return {
        "MLP backward": b * n * a * (f + e),
        "attention backward": b * n * a * (e - 2 * f) + attention + _math_scores(s),
        "channel aggregation backward": b * n * a * c * e - blocks,
    }


def memory_breakdown(s: RunShape, machine: Machine, params: int) -> dict:
    a = BYTES[s.precision]
    b, n, e, c = s.micro_batch, s.local_tokens, s.embed_dim, s.channels
    w = s.world
    weights, grads = float(a * params), float(a * params)
    if s.precision != "fp32":
        grads += 4 * params  # DeepSpeed's bf16 optimizer accumulates the gradients in fp32
    optimizer = float((12 if (s.precision != "fp32" or s.zero_stage >= 1) else 8) * params)
    bucket = 0.0
    if s.zero_stage >= 1:
        optimizer /= w
        bucket = a * (min(DEEPSPEED_REDUCE_BUCKET, params) if machine.memory_on_touch else DEEPSPEED_REDUCE_BUCKET)
    if s.zero_stage >= 2:
        grads /= w
    if s.zero_stage >= 3:
        # the partition, plus one block's weights gathered at a time
        block_params = (params - parameter_count(replace(s, depth=0))) / max(s.depth, 1)
        weights = weights / w + a * block_params
    pp = s.patch_size**2
    rows, cols = s.grid
    inputs = 2 * (s.batch_size // s.dp) * c * n * pp * 4  # tokens and targets, fp32 from the loader
    embedding = _embedding_saved(s)
    block = _block_saved(s)
    if s.activation_checkpointing:
        saved = float(s.depth * b * n * e * a)
        recompute = block - b * n * e * a  # its input is one of the saved
    else:
        saved = s.depth * block
        recompute = 0.0
    overhead = machine.overhead + (machine.zero_overhead if s.zero_stage >= 1 else 0.0)
    overhead += machine.precision_overhead.get(s.precision, 0.0)
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optimizer,
        "ZeRO reduce bucket": bucket,
        "position tables": (rows + cols) * e / 2 * a,
        "inputs": float(inputs),
        "activations (saved)": embedding + saved,
        "block recompute": recompute,
        "backward working set": max(_working_set(s, saved + recompute).values()),
        "runtime overhead": overhead,
    }


def outer_seconds(machine: Machine, kind: str, s: RunShape, size: float) -> float:
    """One all-gather or reduce-scatter (size: a rank's segment) of the outer groups, or one ring hop
    (kind "send", size: the block each rank sends to the next), with all I outer groups of a
    sequence-parallel group at work at once.

    An outer group is O = sp / I ranks, I apart, spanning the group's sp contiguous ranks, so its links
    are those of the smallest level holding sp ranks. Across nodes, all I groups together bring every
    segment from another node into each node once, as one contiguous all-gather over sp ranks; a hop
    takes I blocks off each node (the last I ranks of a node send to the next). A hop is priced at the
    level's own bandwidth and latency (machine files measure no point-to-point figure). With I = 1 the
    collectives are Machine.collective_seconds over sp ranks.
    """
    inner, outer = s.inner, s.outer
    if kind != "send" and inner == 1:
        return machine.collective_seconds(kind, outer, size)
    if outer <= 1 or size <= 0:
        return 0.0
    steps = 1 if kind == "send" else outer - 1
    level = next((lv for lv in machine.levels if lv.ranks >= s.sp), None)
    if level is not None:
        bandwidth, latency = level.figures(kind)
        return steps * (size / bandwidth + latency)
    per_node = machine.devices_per_node
    local = machine.levels[-1] if machine.levels else None
    inside = steps * size / local.figures(kind)[0] if local is not None and per_node > 1 else 0.0
    network = (min(inner, per_node) if kind == "send" else s.sp - per_node) * size
    return max(inside, network / machine.node_bandwidth) + steps * machine.network_latency


def communication(s: RunShape, machine: Machine, params: int) -> dict:
    """Seconds per step of each kind of collective on one rank."""
    a = BYTES[s.precision]
    b, n, e = s.micro_batch, s.local_tokens, s.embed_dim
    micro = s.grad_accumulation
    forwards = 2 if s.activation_checkpointing else 1  # recomputation repeats the forward exchange
    comm = {"all-to-all": 0.0, "all-gather": 0.0, "reduce-scatter": 0.0, "ring sends": 0.0, "gradient all-reduce": 0.0}
    ulysses = s.sp if s.outer_method == "ulysses" else s.inner  # ranks of the head-scattering all-to-all
    if ulysses > 1:
        qkv = machine.collective_seconds("all_to_all", ulysses, 3 * b * n * e * a)
        out = machine.collective_seconds("all_to_all", ulysses, b * n * e * a)
        comm["all-to-all"] = s.depth * micro * ((forwards + 1) * (qkv + out))
    if _lss(s):
        chunks = s.head_chunks
        segment = 2 * b * n * e * a / chunks  # this rank's K and V of one chunk of heads
        gather = outer_seconds(machine, "all_gather", s, segment)
        scatter = outer_seconds(machine, "reduce_scatter", s, segment * SUM_BYTES / a)
        comm["all-gather"] = s.depth * micro * forwards * chunks * gather
        comm["reduce-scatter"] = s.depth * micro * chunks * scatter
    if _ring(s):
        # O - 1 hops of the K/V block each forward; the backward passes K/V and the fp32 dK/dV separately
        kv = outer_seconds(machine, "send", s, 2 * b * n * e * a)
        dkv = outer_seconds(machine, "send", s, 2 * b * n * e * SUM_BYTES)
        comm["ring sends"] = s.depth * micro * (s.outer - 1) * ((forwards + 1) * kv + dkv)
    grads = a * params
    if s.zero_stage <= 1:
        comm["gradient all-reduce"] = machine.collective_seconds("all_reduce", s.world, grads)
    else:
        # reduce-scatter of the gradients every micro-batch, all-gather of the updated weights
        shard = grads / s.world
        comm["gradient all-reduce"] = micro * machine.collective_seconds("reduce_scatter", s.world, shard)
        comm["gradient all-reduce"] += machine.collective_seconds("all_gather", s.world, shard)
        if s.zero_stage == 3:  # weights gathered in the forward and the backward of every micro-batch
            comm["all-gather"] += (forwards + 1) * micro * machine.collective_seconds("all_gather", s.world, shard)
    return comm


def elementwise_traffic(s: RunShape, memory: dict) -> float:
    """Bytes of elementwise work in a step of one rank, the count the machine's elementwise_gbs is measured in.

    The activations saved are written and read in the forward pass, their gradients written and
    read in the backward pass (4 passes; blocks recomputed under checkpointing once more); the
    optimizer reads and writes its state.
    """
    passes = 5 if s.activation_checkpointing else 4
    activations = 4 * _embedding_saved(s) + passes * s.depth * _block_saved(s)
    state = memory["weights"] + memory["gradients"] + memory["optimizer"]
    return activations * s.grad_accumulation + 2 * state


def ring_softmax_traffic(s: RunShape) -> float:
    """Bytes ring attention's explicit softmax moves in a step of one rank: RING_SOFTMAX_PASSES over
    fp32 scores of H / I heads, I n queries and N keys per block and micro-batch (= H n N)."""
    forward, backward = RING_SOFTMAX_PASSES
    passes = (2 if s.activation_checkpointing else 1) * forward + backward
    scores = s.micro_batch * s.num_heads * s.local_tokens * s.tokens * RING_BYTES
    return s.depth * s.grad_accumulation * passes * scores


def compute_time(s: RunShape, machine: Machine, params: int, flops: dict, memory: dict) -> dict:
    """Seconds per step of one rank's own work, part by part (module docstring)."""
    on_node = min(s.world, machine.devices_per_node)
    share = machine.compute_share(on_node, max(1, s.threads // on_node))  # threads per rank, as training sets them
    parts = {
        "matmuls": flops["executed_matmul_per_rank"] / (machine.peak(s.precision) * machine.efficiency * share),
        "attention": flops["executed_attention_per_rank"] / (machine.attention_rate(s.precision) * share),
    }
    if s.precision in machine.elementwise:
        parts["elementwise"] = elementwise_traffic(s, memory) / (machine.elementwise[s.precision] * share)
    if _ring(s):
        # ring attention is not the fused kernel: fp32 matmuls over its blocks and an explicit softmax
        fp32 = "fp32" if "fp32" in machine.peak_flops else s.precision
        parts["attention"] = flops["executed_attention_per_rank"] / (machine.peak(fp32) * machine.efficiency * share)
        if fp32 in machine.elementwise:
            parts["ring softmax"] = ring_softmax_traffic(s) / (machine.elementwise[fp32] * share)
    blocks = s.depth * s.grad_accumulation
    per_block = machine.block_overhead + (machine.zero3_block_overhead if s.zero_stage == 3 else 0.0)
    framework = machine.step_overhead + blocks * per_block
    if framework:
        parts["framework"] = framework
    return parts


def plan_run(s: RunShape, machine: Machine) -> Plan:
    params = parameter_count(s)
    model_cfg: dict = {"embed_dim": s.embed_dim, "depth": s.depth, "num_heads": s.num_heads, "mlp_ratio": s.mlp_ratio}
    grid = None
    if s.attention_pattern == "window":  # attention over the windows of the token grid only
        model_cfg.update(attention_pattern="window", window_size=s.window_size)
        grid = s.grid
    per_sample = model_flops_per_sample(model_cfg, s.channels, s.patch_size, s.tokens, token_grid=grid)
    parts = forward_flops_by_part(model_cfg, s.channels, s.patch_size, s.tokens, token_grid=grid)
    # each sample is shared by the P ranks of its group; a replica runs B / D samples per step
    samples = s.batch_size / s.dp / s.sp
    model_per_rank = per_sample * samples
    attention = 3 * parts["attention"] * samples  # forward and backward (twice the forward), as model FLOPs
    recompute = {"matmul": 0.0, "attention": 0.0}
    if s.activation_checkpointing:
        recompute = {"matmul": parts["block_linear"] * samples, "attention": parts["attention"] * samples}
    plan = Plan(shape=s, machine=machine, params=params)
    plan.flops = {
        "model_per_sample": per_sample,
        "model_per_rank": model_per_rank,
        "executed_per_rank": model_per_rank + recompute["matmul"] + recompute["attention"],
        "executed_matmul_per_rank": model_per_rank - attention + recompute["matmul"],
        "executed_attention_per_rank": attention + recompute["attention"],
    }
    plan.memory = memory_breakdown(s, machine, params)
    plan.compute = compute_time(s, machine, params, plan.flops, plan.memory)
    plan.compute_seconds = sum(plan.compute.values())
    plan.comm = communication(s, machine, params)
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
        candidates.append(replace(current, sp_method="ulysses", sp_inner=1))
    sp = current.sp * 2
    while sp <= min(max_sp or current.tokens, current.tokens):
        if current.num_heads % sp == 0:
            candidates.append(replace(current, sp=sp, sp_method="ulysses", sp_inner=1))
        else:
            candidates.append(replace(current, sp=sp))
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
        "sp_inner": "parallel.sp_inner",
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
