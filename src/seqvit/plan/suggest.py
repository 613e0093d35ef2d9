"""Layouts of one run that fit a machine, best predicted throughput first (seqvit plan --suggest),
and the predicted efficiency of weak scaling (fixed batch per replica, more replicas).

A layout is: sequence-parallel degree and method (every method; the two-level ones with every
parallel.sp_inner that divides sp and the heads and fits in a node; window attention stays at sp = 1),
data-parallel replicas, gradient accumulation
(hence the micro-batch), ZeRO stage and activation checkpointing; the model, the global batch
(train.batch_size), the precision and the attention kernel stay as the config has them. A layout
is tried only when training would accept it: parallel/groups.py check_layout (heads for Ulysses,
tokens, world and batch), RunShape.check (accumulation), and, for a config with a cluster
section, train/slurm.py job_shape (sequence-parallel groups fill whole nodes, a partition takes
the nodes). Sequence-parallel degrees tried: the divisors of a node's devices, then whole nodes,
doubling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from seqvit.errors import SeqvitError
from seqvit.plan.estimate import Plan, RunShape, plan_run, run_shape
from seqvit.plan.machine import DEFAULT_MACHINE, Machine, load_machine

TOP = 10
GB = 1e9


@dataclass(frozen=True)
class Suggestion:
    plan: Plan
    methods: tuple  # sequence-parallel methods with this very prediction ("-" when sp = 1), plan's first
    nodes: int

    def apply(self) -> str:
        """The config keys that give a run this layout."""
        s = self.plan.shape
        run = f"parallel.runs.{s.patch_size}: {{sp: {s.sp}, dp: {s.dp}, grad_accumulation: {s.grad_accumulation}}}"
        keys = [
            f"train.zero_stage={s.zero_stage}",
            f"train.activation_checkpointing={str(s.activation_checkpointing).lower()}",
        ]
        if s.sp > 1:
            keys.insert(0, f"parallel.sp_method={s.sp_method}")
            if s.inner > 1:
                keys.insert(1, f"parallel.sp_inner={s.sp_inner}")
        return f"{run}; {', '.join(keys)}"


@dataclass(frozen=True)
class Suggestions:
    shape: RunShape  # the run asked about (its own layout)
    machine: Machine
    max_nodes: int
    tried: int  # layouts training accepts, on up to max_nodes nodes
    ranked: list  # of Suggestion, best first (all that fit)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nodes(world: int, machine: Machine) -> int:
    return math.ceil(world / machine.devices_per_node)


def _sp_degrees(machine: Machine, tokens: int) -> list[int]:
    degrees = _divisors(machine.devices_per_node)
    sp = machine.devices_per_node * 2
    while sp <= tokens:
        degrees.append(sp)
        sp *= 2
    return [d for d in degrees if d <= tokens]


def question_shape(cfg: dict, patch_size: int | None = None, tokens: int | None = None) -> tuple[RunShape, int]:
    """(the run asked about, its nodes' worth of ranks): --patch-size P, or --tokens N of the config's model.

    With --tokens alone, a token covers the grid's cells / N pixels: the nearest square patch.
    """
    from seqvit.data.grids import named_grid
    from seqvit.runs import run_parallelism

    if patch_size is None and tokens is None:
        raise SeqvitError("seqvit plan --suggest needs --patch-size P (a run of the config) or --tokens N")
    known = patch_size if patch_size is not None else int(cfg["tokenize"]["patch_sizes"][0])
    # the run with a neutral layout: one rank, no accumulation (the layouts come from the search)
    neutral = {**cfg, "parallel": {**(cfg.get("parallel") or {}), "sp": 1, "dp": 1, "runs": {}}}
    neutral["train"] = {**cfg["train"], "grad_accumulation": 1}
    shape = run_shape(neutral, known)
    if tokens is not None:
        cells = math.prod(named_grid(cfg["grid"]).shape)
        side = patch_size if patch_size is not None else max(1, round(math.sqrt(cells / tokens)))
        shape = replace(shape, tokens=int(tokens), patch_size=int(side))
    sp, dp = run_parallelism(cfg, known) if patch_size is not None else (1, 1)
    return shape, sp * dp


def check_accepted(shape: RunShape, cfg: dict) -> None:
    """Raise SeqvitError when training would refuse this layout (the checks it runs, reused)."""
    from seqvit.parallel.groups import check_layout
    from seqvit.train.slurm import job_shape

    check_layout(
        num_tokens=shape.tokens,
        num_heads=shape.num_heads,
        sp=shape.sp,
        method=shape.sp_method,
        world_size=shape.world,
        batch_size=shape.batch_size,
        uneven=(cfg.get("parallel") or {}).get("uneven", "error"),
        sp_inner=shape.sp_inner,
    )
    shape.check()
    if cfg.get("cluster"):
        runs = {shape.patch_size: {"sp": shape.sp, "dp": shape.dp}}
        job_shape({**cfg, "parallel": {**(cfg.get("parallel") or {}), "runs": runs}}, shape.patch_size)


def _accepted(shape: RunShape, cfg: dict) -> bool:
    try:
        check_accepted(shape, cfg)
    except SeqvitError:
        return False
    return True


def _methods(shape: RunShape, machine: Machine, sp: int) -> list[tuple[str, int]]:
    """(method, sp_inner) pairs to try at degree sp: every method; the two-level ones with every inner
    group that divides sp and the heads and stays inside a node. Window attention runs at sp = 1 only."""
    from seqvit.parallel.groups import SP_METHODS, TWO_LEVEL

    if sp == 1:
        return [(shape.sp_method, 1 if shape.sp_method not in TWO_LEVEL else shape.sp_inner)]
    if shape.attention_pattern == "window":
        return []
    inner = [i for i in _divisors(sp) if 1 < i < sp and shape.num_heads % i == 0 and i <= machine.devices_per_node]
    return [(m, i) for m in SP_METHODS for i in (inner if m in TWO_LEVEL else [1])]


def _label(shape: RunShape) -> str:
    return f"{shape.sp_method} {shape.inner}x{shape.outer}" if shape.inner > 1 else shape.sp_method


def candidates(shape: RunShape, machine: Machine, cfg: dict):
    """Every layout of `shape` training accepts (any node count)."""
    for sp in _sp_degrees(machine, shape.tokens):
        for method, inner in _methods(shape, machine, sp):
            for dp in _divisors(shape.batch_size):
                for accumulation in _divisors(shape.batch_size // dp):
                    for zero in range(4):
                        for checkpointing in (False, True):
                            layout = replace(
                                shape,
                                sp=sp,
                                sp_method=method,
                                sp_inner=inner,
                                dp=dp,
                                grad_accumulation=accumulation,
                                zero_stage=zero,
                                activation_checkpointing=checkpointing,
                            )
                            if _accepted(layout, cfg):
                                yield layout


def suggest(
    shape: RunShape, machine: Machine, cfg: dict, own_world: int = 1, max_nodes: int | None = None
) -> Suggestions:
    """The layouts of `shape` that fit `machine` on at most `max_nodes` nodes, best predicted tokens/s first.

    max_nodes None: the nodes of the config's own layout (`own_world` ranks), or the fewest on
    which any layout fits when that is more.
    """
    plans = [plan_run(layout, machine) for layout in candidates(shape, machine, cfg)]
    fitting = [plan for plan in plans if plan.fits]
    if max_nodes is None:
        fewest = min((_nodes(plan.shape.world, machine) for plan in fitting), default=1)
        max_nodes = max(_nodes(own_world, machine), fewest)
    tried = sum(1 for plan in plans if _nodes(plan.shape.world, machine) <= max_nodes)
    groups: dict = {}
    for plan in fitting:
        s = plan.shape
        if _nodes(s.world, machine) > max_nodes:
            continue
        # methods the estimate cannot tell apart (e.g. both Ulysses) share one row
        key = (s.sp, s.dp, s.grad_accumulation, s.zero_stage, s.activation_checkpointing, plan.peak, plan.step_seconds)
        if key in groups:
            groups[key] = (groups[key][0], groups[key][1] + (_label(s),))
        else:
            groups[key] = (plan, (_label(s),) if s.sp > 1 else ("-",))
    ranked = [Suggestion(plan, methods, _nodes(plan.shape.world, machine)) for plan, methods in groups.values()]
    ranked.sort(key=lambda g: (-g.plan.tokens_per_s, g.nodes, g.plan.peak))
    return Suggestions(shape, machine, max_nodes, tried, ranked)


def format_suggestions(result: Suggestions, top: int = TOP) -> str:
    s, m = result.shape, result.machine
    head = [
        f"layouts for p={s.patch_size}: {s.tokens:,} tokens of {s.patch_size} x {s.patch_size} pixels, batch "
        f"{s.batch_size}, {s.embed_dim} wide x {s.depth} blocks, {s.num_heads} heads, {s.precision}, attention "
        f"{s.attention}, on {m.name} ({m.devices_per_node} devices per node, {m.memory / GB:.0f} GB each)",
        f"{result.tried:,} layouts training accepts on up to {result.max_nodes} nodes (--max-nodes), "
        f"{len(result.ranked)} fit; the best {min(top, len(result.ranked))} by predicted tokens/s:",
    ]
    if not result.ranked:
        return "\n".join(head[:1] + [f"no layout on up to {result.max_nodes} nodes fits: use a smaller model"])
    rows = [
        f"{'#':>3} {'sp':>5} {'method':<27} {'dp':>4} {'micro x acc':>11} {'ZeRO':>4} {'ckpt':>4} {'nodes':>5} "
        f"{'peak GB':>8} {'step s':>9} {'tokens/s':>11} {'MFU':>6}"
    ]
    for i, g in enumerate(result.ranked[:top], 1):
        p = g.plan
        rows.append(
            f"{i:>3} {p.shape.sp:>5} {' | '.join(g.methods):<27} {p.shape.dp:>4} "
            f"{f'{p.shape.micro_batch} x {p.shape.grad_accumulation}':>11} {p.shape.zero_stage:>4} "
            f"{'on' if p.shape.activation_checkpointing else 'off':>4} {g.nodes:>5} {p.peak / GB:8.1f} "
            f"{p.step_seconds:9.3f} {p.tokens_per_s:11,.0f} {p.mfu:6.1%}"
        )
    apply = f"the first as config keys: {result.ranked[0].apply()}"
    return "\n".join(head + rows + [apply])


def suggest_config(
    cfg: dict,
    patch_size: int | None = None,
    tokens: int | None = None,
    machine_name: str | None = None,
    max_nodes: int | None = None,
) -> Suggestions:
    for flag, value in (("--tokens", tokens), ("--max-nodes", max_nodes), ("--patch-size", patch_size)):
        if value is not None and value < 1:
            raise SeqvitError(f"seqvit plan {flag} {value}: must be at least 1")
    machine = load_machine(machine_name or cfg.get("machine") or DEFAULT_MACHINE)
    shape, own_world = question_shape(cfg, patch_size, tokens)
    return suggest(shape, machine, cfg, own_world, max_nodes)


@dataclass(frozen=True)
class WeakScaling:
    """Weak scaling of one run: the same batch per replica on more replicas (a larger global batch)."""

    base: Plan  # the fewest nodes that hold whole replicas
    scaled: Plan

    @property
    def base_nodes(self) -> int:
        return _nodes(self.base.shape.world, self.base.machine)

    @property
    def nodes(self) -> int:
        return _nodes(self.scaled.shape.world, self.scaled.machine)

    @property
    def efficiency(self) -> float:
        """Tokens/s per device at scale over tokens/s per device at the base: with the work per device fixed, the ratio of step times."""
        return self.base.step_seconds / self.scaled.step_seconds


def weak_scaling(shape: RunShape, machine: Machine, nodes: int) -> WeakScaling | None:
    """Predicted weak scaling of `shape` from one node (or one replica's nodes) to `nodes` nodes.

    The replicas grow with the nodes at a fixed batch per replica and accumulation, so only the
    gradient all-reduce (ZeRO: reduce-scatter and all-gather) over the larger world changes: its
    bandwidth term crosses the network once replicas span nodes, and its latency grows with the
    ranks. None when one replica needs more than `nodes` nodes.
    """
    per_node = machine.devices_per_node
    per_replica = shape.batch_size // shape.dp

    def at(dp: int) -> Plan:
        return plan_run(replace(shape, dp=dp, batch_size=per_replica * dp), machine)

    base_dp = max(1, per_node // shape.sp)
    scaled_dp = nodes * per_node // shape.sp
    if scaled_dp < base_dp:
        return None
    return WeakScaling(at(base_dp), at(scaled_dp))


def fastest_on(shape: RunShape, machine: Machine, cfg: dict, nodes: int, methods=None) -> Plan | None:
    """The fastest layout that fits and fills exactly `nodes` nodes, at the config's own ZeRO stage and
    checkpointing (a cheap subset of suggest: only sp, dp, accumulation and method, of `methods` if
    given, vary); None if none fits."""
    world = nodes * machine.devices_per_node
    best = None
    for dp in _divisors(shape.batch_size):
        if world % dp or world // dp > shape.tokens:
            continue
        sp = world // dp
        for method, inner in _methods(shape, machine, sp):
            if methods is not None and method not in methods:
                continue
            for accumulation in _divisors(shape.batch_size // dp):
                layout = replace(shape, sp=sp, dp=dp, sp_method=method, sp_inner=inner, grad_accumulation=accumulation)
                if not _accepted(layout, cfg):
                    continue
                plan = plan_run(layout, machine)
                if plan.fits and (best is None or plan.step_seconds < best.step_seconds):
                    best = plan
    return best


def split_label(shape: RunShape) -> str:
    """The method with its (inner, outer) ranks: the Ulysses all-to-all's, then LSS's or ring's, e.g.
    ulysses-lss (4, 16), ulysses (8, 1), lss (1, 8)."""
    if shape.sp == 1:
        return "none (sp = 1)"
    if shape.outer_method == "ulysses":
        return f"{shape.sp_method} ({shape.sp}, 1)"
    return f"{shape.sp_method} ({shape.inner}, {shape.outer})"
