"""A machine as data (config/machines/NAME.yaml): device memory, peak FLOP/s and the links between ranks.

Ranks are numbered node by node, and a collective over g contiguous ranks runs over the
smallest level (`levels`, e.g. the two GCDs of one MI250X, then the node) that holds g ranks;
a larger group spans nodes and its traffic between nodes goes through the node's network
injection bandwidth (`network.node_bandwidth_gbs`, all NICs of a node together). A level may give
measured figures per collective (`collectives: {all_gather: {bandwidth_gbs, latency_us}, ...}`,
what `seqvit plan --calibrate` writes); the level's own figures serve the others.

Optional keys, measured by `seqvit plan --calibrate` on the machine at hand (seqvit.plan.calibrate):
  attention_tflops       the local attention kernel, forward + backward, in model FLOPs (3 x the
                         forward's 4 n N d per head) per second; absent: peak_tflops x efficiency
  elementwise_gbs        per precision, bytes of the planner's count of elementwise traffic (layer
                         norms, GELU, adds, layout copies, the optimizer; estimate.elementwise_traffic)
                         the model's own ops move per second; absent: that work is left in
                         `efficiency`
  cores_per_node         ranks of a node beyond this many share cores; the rates above are those of
                         one core (one thread per rank)
  framework_overhead_ms  {step, block, zero3_block}: the framework's own time per optimizer step
                         and per block and micro-batch (Python, dispatch, hooks), ZeRO-3's extra
  zero_overhead_gb       runtime memory the ZeRO optimizer (stages 1-3) adds to runtime_overhead_gb
  precision_overhead_gb  {bf16: GB}: what training in that precision adds to it (other kernels,
                         DeepSpeed's bf16 optimizer)
  memory_on_touch        true for host memory: an allocation costs only the pages written (DeepSpeed's
                         reduce bucket is allocated whole but filled only by the gradients)
  calibrated             when, with which torch and on which CPU the figures were measured
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import yaml

from seqvit.errors import SeqvitError
from seqvit.machines import machine_path

DEFAULT_MACHINE = "cpu-local"
_REQUIRED = ("device_memory_gb", "runtime_overhead_gb", "peak_tflops", "efficiency", "devices_per_node", "network")


COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


@dataclass(frozen=True)
class Level:
    name: str
    ranks: int
    bandwidth: float  # bytes/s per direction per rank
    latency: float  # s per message
    collectives: dict = field(default_factory=dict)  # kind -> (bandwidth, latency) measured for that collective

    def figures(self, kind: str) -> tuple[float, float]:
        return self.collectives.get(kind, (self.bandwidth, self.latency))


@dataclass(frozen=True)
class Machine:
    name: str
    description: str
    memory: float  # bytes per device
    overhead: float  # bytes per device the runtime keeps
    peak_flops: dict  # precision -> FLOP/s
    efficiency: float
    devices_per_node: int
    levels: tuple
    node_bandwidth: float  # bytes/s per direction, whole node
    network_latency: float
    attention_flops: dict = field(default_factory=dict)  # precision -> FLOP/s of the attention kernel
    elementwise: dict = field(default_factory=dict)  # precision -> bytes/s of elementwise traffic
    cores_per_node: int = 0  # 0: every rank has its own device
    step_overhead: float = 0.0  # s per optimizer step
    block_overhead: float = 0.0  # s per block and micro-batch, forward and backward
    zero3_block_overhead: float = 0.0  # s per block and micro-batch more under ZeRO-3
    zero_overhead: float = 0.0  # bytes the ZeRO optimizer's runtime adds
    precision_overhead: dict = field(default_factory=dict)  # precision -> bytes its runtime adds
    memory_on_touch: bool = False
    calibrated: dict = field(default_factory=dict)

    def compute_share(self, ranks_on_node: int, threads: int = 1) -> float:
        """Cores one rank computes on, in units of the one-core rates of a CPU machine file (1 on devices)."""
        if not self.cores_per_node:
            return 1.0
        return max(min(float(threads), self.cores_per_node / max(ranks_on_node, 1)), 1e-9)

    def attention_rate(self, precision: str) -> float:
        """FLOP/s of the local attention kernel (forward + backward in model FLOPs)."""
        if precision in self.attention_flops:
            return self.attention_flops[precision]
        return self.peak(precision) * self.efficiency

    def peak(self, precision: str) -> float:
        if precision not in self.peak_flops:
            raise SeqvitError(
                f"machine {self.name}: no peak_tflops.{precision}; add it to its machine file (dense matrix "
                f"TFLOP/s of one device)"
            )
        return self.peak_flops[precision]

    def collective_seconds(self, kind: str, ranks: int, size: float) -> float:
        """Time of one collective over `ranks` contiguous ranks.

        size: for all_gather and reduce_scatter the bytes one rank contributes (its segment); for
        all_to_all and all_reduce the bytes of one rank's buffer. Bandwidth terms are per direction;
        ring algorithms, pipelined, so the slower of the node-internal and network parts bounds them.
        """
        if ranks <= 1 or size <= 0:
            return 0.0
        g = ranks
        if kind in ("all_gather", "reduce_scatter"):
            inside_bytes, steps = (g - 1) * size, g - 1
        elif kind == "all_to_all":
            inside_bytes, steps = (g - 1) / g * size, 1
        elif kind == "all_reduce":
            inside_bytes, steps = 2 * (g - 1) / g * size, 2 * (g - 1)
        else:
            raise SeqvitError(f"unknown collective {kind!r}")
        level = next((lv for lv in self.levels if lv.ranks >= g), None)
        if level is not None:
            bandwidth, latency = level.figures(kind)
            return inside_bytes / bandwidth + steps * latency
        per_node = self.devices_per_node
        nodes = math.ceil(g / per_node)
        local = self.levels[-1] if self.levels else None
        # a ring still moves every rank's whole share through its links inside the node
        inside = inside_bytes / local.figures(kind)[0] if local is not None and per_node > 1 else 0.0
        if kind in ("all_gather", "reduce_scatter"):
            # every segment from another node enters each node once
            network_bytes = (g - per_node) * size
        elif kind == "all_to_all":
            # each rank sends the share of its buffer meant for other nodes
            network_bytes = per_node * size * (g - per_node) / g
        else:
            # hierarchical: each node all-reduces its buffer with the other nodes through all its NICs
            network_bytes = 2 * (nodes - 1) / nodes * size
        network = network_bytes / self.node_bandwidth
        return max(inside, network) + steps * self.network_latency


def _positive(data: dict, key: str, where: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise SeqvitError(f"{where}: key {key} must be a positive number, got {value!r}")
    return float(value)


def load_machine(name: str) -> Machine:
    path = machine_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SeqvitError(f"{path}: not valid YAML: {exc}") from exc
    where = str(path)
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise SeqvitError(f"{where}: missing keys {', '.join(missing)} (config/machines/frontier.yaml is an example)")
    peaks = data["peak_tflops"]
    if not isinstance(peaks, dict) or not peaks:
        raise SeqvitError(f"{where}: peak_tflops must map precisions to TFLOP/s, e.g. {{bf16: 191.5, fp32: 47.9}}")
    levels = []
    for i, level in enumerate(data.get("levels") or []):
        at = f"{where}: levels[{i}]"
        collectives = {}
        for kind, figures in (level.get("collectives") or {}).items():
            if kind not in COLLECTIVES or not isinstance(figures, dict):
                raise SeqvitError(
                    f"{at}: collectives.{kind} must be one of {', '.join(COLLECTIVES)} mapped to "
                    f"{{bandwidth_gbs, latency_us}}"
                )
            inner = f"{at}: collectives.{kind}"
            collectives[kind] = (
                _positive(figures, "bandwidth_gbs", inner) * 1e9,
                _positive(figures, "latency_us", inner) * 1e-6,
            )
        levels.append(
            Level(
                str(level.get("name", f"level{i}")),
                int(_positive(level, "ranks", at)),
                _positive(level, "bandwidth_gbs", at) * 1e9,
                _positive(level, "latency_us", at) * 1e-6,
                collectives,
            )
        )
    levels.sort(key=lambda lv: lv.ranks)
    network = data["network"] or {}
    efficiency = _positive(data, "efficiency", where)
    if efficiency > 1:
        raise SeqvitError(f"{where}: efficiency {efficiency} must be at most 1 (achieved over peak FLOP/s)")
    return Machine(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        memory=_positive(data, "device_memory_gb", where) * 1e9,
        overhead=float(data.get("runtime_overhead_gb") or 0) * 1e9,
        peak_flops={str(k): _positive(peaks, k, f"{where}: peak_tflops") * 1e12 for k in peaks},
        efficiency=efficiency,
        devices_per_node=int(_positive(data, "devices_per_node", where)),
        levels=tuple(levels),
        node_bandwidth=_positive(network, "node_bandwidth_gbs", f"{where}: network") * 1e9,
        network_latency=_positive(network, "latency_us", f"{where}: network") * 1e-6,
        **_measured(data, where),
    )


def _measured(data: dict, where: str) -> dict:
    """The optional keys `seqvit plan --calibrate` measures (module docstring); absent ones stay 0."""
    attention = data.get("attention_tflops") or {}
    if not isinstance(attention, dict):
        raise SeqvitError(f"{where}: attention_tflops must map precisions to TFLOP/s, e.g. {{bf16: 0.08, fp32: 0.06}}")
    elementwise = data.get("elementwise_gbs") or {}
    if not isinstance(elementwise, dict):
        raise SeqvitError(f"{where}: elementwise_gbs must map precisions to GB/s, e.g. {{bf16: 3, fp32: 6}}")
    framework = data.get("framework_overhead_ms") or {}
    unknown = set(framework) - {"step", "block", "zero3_block"}
    if not isinstance(framework, dict) or unknown:
        raise SeqvitError(f"{where}: framework_overhead_ms takes step, block and zero3_block (milliseconds)")
    cores = data.get("cores_per_node")
    on_touch = data.get("memory_on_touch", False)
    if not isinstance(on_touch, bool):
        raise SeqvitError(f"{where}: memory_on_touch must be true or false, got {on_touch!r}")
    overheads = {k: float(v) for k, v in framework.items()}
    if any(not v >= 0 for v in overheads.values()):
        raise SeqvitError(f"{where}: framework_overhead_ms values must not be negative, got {framework}")
    precision = data.get("precision_overhead_gb") or {}
    if not isinstance(precision, dict) or any(
        isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0 for v in precision.values()
    ):
        raise SeqvitError(f"{where}: precision_overhead_gb must map precisions to GB, at least 0, e.g. {{bf16: 0.02}}")
    zero = data.get("zero_overhead_gb") or 0
    if isinstance(zero, bool) or not isinstance(zero, numbers.Real) or zero < 0:
        raise SeqvitError(f"{where}: key zero_overhead_gb must be a number of GB, at least 0, got {zero!r}")
    return {
        "attention_flops": {str(k): _positive(attention, k, f"{where}: attention_tflops") * 1e12 for k in attention},
        "elementwise": {str(k): _positive(elementwise, k, f"{where}: elementwise_gbs") * 1e9 for k in elementwise},
        "cores_per_node": int(_positive(data, "cores_per_node", where)) if cores is not None else 0,
        "step_overhead": overheads.get("step", 0.0) * 1e-3,
        "block_overhead": overheads.get("block", 0.0) * 1e-3,
        "zero3_block_overhead": overheads.get("zero3_block", 0.0) * 1e-3,
        "zero_overhead": float(zero) * 1e9,
        "precision_overhead": {str(k): float(v) * 1e9 for k, v in precision.items()},
        "memory_on_touch": on_touch,
        "calibrated": dict(data.get("calibrated") or {}),
    }
