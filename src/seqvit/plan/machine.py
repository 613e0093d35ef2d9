"""A machine as data (config/machines/NAME.yaml): device memory, peak FLOP/s and the links between ranks.

Ranks are numbered node by node, and a collective over g contiguous ranks runs over the
smallest level (`levels`, e.g. the two GCDs of one MI250X, then the node) that holds g ranks;
a larger group spans nodes and its traffic between nodes goes through the node's network
injection bandwidth (`network.node_bandwidth_gbs`, all NICs of a node together).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import yaml

from seqvit.errors import SeqvitError

# config/machines of the checkout this package lives in (an editable install), then of the working folder
_MACHINE_DIRS = (Path(__file__).resolve().parents[3] / "config" / "machines", Path("config") / "machines")
DEFAULT_MACHINE = "cpu-local"
_REQUIRED = ("device_memory_gb", "runtime_overhead_gb", "peak_tflops", "efficiency", "devices_per_node", "network")


@dataclass(frozen=True)
class Level:
    name: str
    ranks: int
    bandwidth: float  # bytes/s per direction per rank
    latency: float  # s per message


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
            return inside_bytes / level.bandwidth + steps * level.latency
        per_node = self.devices_per_node
        nodes = math.ceil(g / per_node)
        local = self.levels[-1] if self.levels else None
        # a ring still moves every rank's whole share through its links inside the node
        inside = inside_bytes / local.bandwidth if local is not None and per_node > 1 else 0.0
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


def machine_path(name: str) -> Path:
    """The machine file of NAME (config/machines/NAME.yaml), or NAME itself when it is a YAML file."""
    given = Path(name)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    for folder in _MACHINE_DIRS:
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in _MACHINE_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})
    raise SeqvitError(
        f"unknown machine {name!r} (config key machine or --machine); use one of {', '.join(known) or '(none found)'} "
        f"or the path of a machine file like config/machines/frontier.yaml"
    )


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
        levels.append(
            Level(
                str(level.get("name", f"level{i}")),
                int(_positive(level, "ranks", at)),
                _positive(level, "bandwidth_gbs", at) * 1e9,
                _positive(level, "latency_us", at) * 1e-6,
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
    )
