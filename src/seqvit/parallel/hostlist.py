"""Slurm's compressed node lists and tasks-per-node strings, read in pure Python.

Why not `scontrol show hostnames`: it needs the Slurm client and a round trip to slurmctld
from every rank at start-up (thousands at once on Frontier), and it is absent in containers
and on laptops, where a hand-set environment must still work.

Node lists (SLURM_JOB_NODELIST, SLURM_STEP_NODELIST, SLURM_NODELIST):
  frontier[00001-00004,00010]   ranges and single numbers in brackets; zero padding kept
  a1,b[2-3]                     commas (and whitespace) outside brackets separate hosts
  rack[1-2]-node[01-02]         several bracket groups: every combination, the first group
                                varying slowest (rack1-node01, rack1-node02, rack2-node01, ...)
Hosts come out in the order written, duplicates kept, as scontrol prints them.

Tasks per node (SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE, SLURM_NTASKS_PER_NODE):
  8          eight tasks on every node
  8(x4)      eight on each of four nodes
  2(x3),1    two on nodes 0-2, one on node 3
"""

from __future__ import annotations

import itertools
import math
import re

from seqvit.errors import SeqvitError

# Refuse to build a list longer than this (a typo like node[1-100000000] must not eat memory).
MAX_HOSTS = 1 << 20

_SEPARATORS = ",\t\n\r "
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]*")
_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
_TASKS = re.compile(r"\s*(\d+)\s*(?:\(\s*x\s*(\d+)\s*\))?\s*")


def _bad_nodelist(variable: str, value: str, why: str) -> SeqvitError:
    return SeqvitError(
        f"{variable}={value!r}: {why}; expected a Slurm node list such as 'frontier[00001-00004,00010]', "
        f"'a1,b[2-3]' or 'rack[1-2]-node[01-02]'"
    )


def _split_hosts(value: str, variable: str) -> list[str]:
    """Host expressions of a list: cut at commas and whitespace outside brackets."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    after_comma = False  # a comma must be followed by a host
    for char in value:
        if char == "[":
            if depth:
                raise _bad_nodelist(variable, value, "nested '['")
            depth = 1
        elif char == "]":
            if not depth:
                raise _bad_nodelist(variable, value, "']' without '['")
            depth = 0
        elif not depth and char in _SEPARATORS:
            if current:
                items.append("".join(current))
                current = []
                after_comma = False
            if char == ",":
                if after_comma or not items:
                    raise _bad_nodelist(variable, value, "an empty host before a comma")
                after_comma = True
            continue
        current.append(char)
    if depth:
        raise _bad_nodelist(variable, value, "'[' without ']'")
    if current:
        items.append("".join(current))
    elif after_comma:
        raise _bad_nodelist(variable, value, "empty host after the last comma")
    if not items:
        raise _bad_nodelist(variable, value, "no host")
    return items


def _parse_ranges(body: str, value: str, variable: str) -> list[tuple[int, int, int]]:
    """[lo, hi, width] of each comma-separated item in one bracket group."""
    ranges = []
    for item in body.split(","):
        match = _RANGE.fullmatch(item)
        if not match:
            raise _bad_nodelist(variable, value, f"[{body}] holds {item.strip()!r}, not a number or range lo-hi")
        low_text, high_text = match.group(1), match.group(2) or match.group(1)
        low, high = int(low_text), int(high_text)
        if low > high:
            raise _bad_nodelist(variable, value, f"range {low_text}-{high_text} runs backwards")
        # Slurm pads every number of a range to the width of its low bound (00008-00012).
        ranges.append((low, high, len(low_text)))
    return ranges


def _parse_host(expression: str, value: str, variable: str) -> list:
    """A host expression as a list of parts: literal text, or the ranges of one bracket group."""
    parts: list = []
    position = 0
    for match in re.finditer(r"\[([^\[\]]*)\]", expression):
        parts.append(expression[position : match.start()])
        parts.append(_parse_ranges(match.group(1), value, variable))
        position = match.end()
    parts.append(expression[position:])
    for part in parts:
        if isinstance(part, str) and not _NAME_CHARS.fullmatch(part):
            raise _bad_nodelist(
                variable,
                value,
                f"{expression!r} has characters a host name cannot have (letters, digits, '.', '_', '-')",
            )
    return parts


def _parse(nodelist: str, variable: str) -> list[list]:
    if not isinstance(nodelist, str):
        raise _bad_nodelist(variable, repr(nodelist), "not a string")
    return [_parse_host(expression, nodelist, variable) for expression in _split_hosts(nodelist, variable)]


def _count(parts: list) -> int:
    return math.prod(sum(high - low + 1 for low, high, _ in part) for part in parts if isinstance(part, list))


def _numbers(ranges: list[tuple[int, int, int]]):
    for low, high, width in ranges:
        for number in range(low, high + 1):
            yield f"{number:0{width}d}"


def _expand_host(parts: list):
    choices = [[part] if isinstance(part, str) else _numbers(part) for part in parts]
    for combination in itertools.product(*choices):
        yield "".join(combination)


def expand_hostlist(nodelist: str, variable: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Every host of a Slurm node list, in order (what `scontrol show hostnames` prints).

    `variable` names where the list came from, for the error a malformed list raises.
    """
    hosts = _parse(nodelist, variable)
    total = sum(_count(parts) for parts in hosts)
    if total > MAX_HOSTS:
        raise _bad_nodelist(
            variable, nodelist, f"{total} hosts, more than the {MAX_HOSTS} seqvit expands (a typo in a range?)"
        )
    return [host for parts in hosts for host in _expand_host(parts)]


def first_host(nodelist: str, variable: str = "SLURM_JOB_NODELIST") -> str:
    """The first host of a node list (where rank 0 runs), without expanding the rest.

    The whole list is still checked: a malformed list raises even when its head is fine.
    """
    hosts = _parse(nodelist, variable)
    return "".join(part if isinstance(part, str) else f"{part[0][0]:0{part[0][2]}d}" for part in hosts[0])


def parse_tasks_per_node(value: str, variable: str = "SLURM_TASKS_PER_NODE") -> list[tuple[int, int]]:
    """(tasks, nodes) runs of a tasks-per-node string: '2(x3),1' -> [(2, 3), (1, 1)]."""
    if not isinstance(value, str) or not value.strip():
        raise SeqvitError(f"{variable}={value!r}: empty; expected tasks per node such as '8', '8(x4)' or '2(x3),1'")
    runs = []
    for item in value.split(","):
        match = _TASKS.fullmatch(item)
        if not match:
            raise SeqvitError(
                f"{variable}={value!r}: {item.strip()!r} is not a count or count(xNODES); expected tasks per node "
                f"such as '8', '8(x4)' or '2(x3),1'"
            )
        tasks, nodes = int(match.group(1)), int(match.group(2) or 1)
        if tasks < 1 or nodes < 1:
            raise SeqvitError(f"{variable}={value!r}: {item.strip()!r} gives a node no task")
        runs.append((tasks, nodes))
    return runs


def expand_tasks_per_node(value: str, variable: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Tasks on each node, in node order: '2(x3),1' -> [2, 2, 2, 1]."""
    runs = parse_tasks_per_node(value, variable)
    if sum(nodes for _, nodes in runs) > MAX_HOSTS:
        raise SeqvitError(f"{variable}={value!r}: more than {MAX_HOSTS} nodes")
    return [tasks for tasks, nodes in runs for _ in range(nodes)]


def tasks_on_node(value: str, node_id: int | None, variable: str = "SLURM_TASKS_PER_NODE") -> int:
    """Tasks on node `node_id` (SLURM_NODEID) of a tasks-per-node string.

    A single plain count ('8') holds for every node. Otherwise node_id picks the entry; it may be
    None only when every node has the same count.
    """
    runs = parse_tasks_per_node(value, variable)
    counts = {tasks for tasks, _ in runs}
    if (len(runs) == 1 and runs[0][1] == 1) or (node_id is None and len(counts) == 1):
        return runs[0][0]
    if node_id is None:
        raise SeqvitError(
            f"{variable}={value!r} gives nodes different task counts, and SLURM_NODEID (this node's index) is not "
            f"set; launch with srun, which sets it, or set SLURM_NODEID"
        )
    first = 0
    for tasks, nodes in runs:
        if node_id < first + nodes:
            return tasks
        first += nodes
    raise SeqvitError(f"SLURM_NODEID={node_id} is past the {first} nodes that {variable}={value!r} describes")
