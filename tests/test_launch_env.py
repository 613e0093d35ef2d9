"""Slurm node lists, tasks per node, and the launcher environment of torchrun and srun (no processes)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest

from seqvit.errors import SeqvitError
from seqvit.parallel import groups
from seqvit.parallel.hostlist import (
    expand_hostlist,
    expand_tasks_per_node,
    first_host,
    parse_tasks_per_node,
    tasks_on_node,
)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("frontier00001", ["frontier00001"]),
        (
            "frontier[00001-00004,00010]",
            ["frontier00001", "frontier00002", "frontier00003", "frontier00004", "frontier00010"],
        ),
        ("a1,b[2-3]", ["a1", "b2", "b3"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),  # no padding: widths grow
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),  # padded to the low bound's width
        ("n[1-010]", [f"n{i}" for i in range(1, 11)]),  # the high bound's zeros do not pad
        ("n[5]", ["n5"]),
        ("n[3,1-2]", ["n3", "n1", "n2"]),  # order as written, like scontrol
        ("x[1-2],y,z[07,9-10]", ["x1", "x2", "y", "z07", "z9", "z10"]),
        ("login1.olcf.ornl.gov,dtn_2", ["login1.olcf.ornl.gov", "dtn_2"]),
        ("gpu[1-2].cluster", ["gpu1.cluster", "gpu2.cluster"]),  # text after the brackets
        ("[1-2]x", ["1x", "2x"]),
        (" a , b\tc[1, 3 ]\n", ["a", "b", "c1", "c3"]),  # whitespace separates, and is ignored in brackets
        ("a,a", ["a", "a"]),  # duplicates kept
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


def _random_nodelist(rng: random.Random) -> str:
    hosts = []
    for _ in range(rng.randint(1, 4)):
        expression = rng.choice(["frontier", "n", "login", "gpu-a", "r"])
        groups_in_name = rng.randint(0, 2)
        for group in range(groups_in_name):
            width, items = rng.choice([1, 2, 3, 5]), []
            for _ in range(rng.randint(1, 3)):
                low = rng.randint(0, 120)
                high = low + rng.randint(0, 15)
                items.append(f"{low:0{width}d}-{high:0{width}d}" if rng.random() < 0.6 else f"{low:0{width}d}")
            expression += "[" + ",".join(items) + "]" + (rng.choice("-cn") if group < groups_in_name - 1 else "")
        hosts.append(expression)
    return ",".join(hosts)


def test_expand_hostlist_agrees_with_scontrol():
    assert shutil.which("scontrol"), (
        "Slurm's scontrol is missing: `make test` installs it (tests/cluster/start-slurm.sh)"
    )
    # `scontrol show hostnames` expands locally (no controller needed): the reference where present
    rng = random.Random(0)
    for _ in range(100):
        nodelist = _random_nodelist(rng)
        reference = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        assert reference.returncode == 0, reference.stderr
        assert expand_hostlist(nodelist) == reference.stdout.split(), nodelist


def test_large_frontier_allocation():
    hosts = expand_hostlist("frontier[00001-09408]")
    assert len(hosts) == 9408 and hosts[0] == "frontier00001" and hosts[-1] == "frontier09408"
    assert len(expand_hostlist("r[1-3]c[1-4]n[1-5]")) == 60


@pytest.mark.parametrize(
    "nodelist, why",
    [
        ("", "no host"),
        ("   ", "no host"),
        ("a,,b", "empty host"),
        (",a", "empty host"),
        ("a,", "empty host after the last comma"),
        ("n[1-2", "'[' without ']'"),
        ("n1-2]", "']' without '['"),
        ("n[[1-2]]", "nested '['"),
        ("n[]", "not a number or range"),
        ("n[1,,2]", "not a number or range"),
        ("n[a-b]", "not a number or range"),
        ("n[1-2-3]", "not a number or range"),
        ("n[-3]", "not a number or range"),
        ("n[5-2]", "runs backwards"),
        ("8(x2)", "characters a host name cannot have"),
        ("n[1-3000000]", "more than"),
    ],
)
def test_malformed_hostlist_names_variable_and_value(nodelist, why):
    with pytest.raises(SeqvitError, match=re.escape(f"SLURM_STEP_NODELIST={nodelist!r}: ") + ".*" + re.escape(why)):
        expand_hostlist(nodelist, "SLURM_STEP_NODELIST")


def test_first_host_checks_the_whole_list():
    assert first_host("n[00001-99999]") == "n00001"  # not expanded
    with pytest.raises(SeqvitError, match="runs backwards"):
        first_host("a1,b[3-2]")


@pytest.mark.parametrize(
    "value, per_node",
    [
        ("8", [8]),
        ("8(x4)", [8, 8, 8, 8]),
        ("2(x3),1", [2, 2, 2, 1]),
        ("1,2(x2),4", [1, 2, 2, 4]),
        (" 4 ( x 2 ) ", [4, 4]),
    ],
)
def test_tasks_per_node_forms(value, per_node):
    assert expand_tasks_per_node(value) == per_node
    for node, tasks in enumerate(per_node):
        assert tasks_on_node(value, node) == tasks


def test_tasks_on_node_without_a_node_id():
    assert tasks_on_node("8", 5) == 8  # one plain count holds for every node
    assert tasks_on_node("8(x4)", None) == 8  # same count everywhere: no node id needed
    assert parse_tasks_per_node("2(x3),1") == [(2, 3), (1, 1)]
    with pytest.raises(SeqvitError, match="different task counts.*SLURM_NODEID"):
        tasks_on_node("2(x3),1", None)
    with pytest.raises(SeqvitError, match=r"SLURM_NODEID=4 is past the 4 nodes.*SLURM_TASKS_PER_NODE='2\(x3\),1'"):
        tasks_on_node("2(x3),1", 4)


@pytest.mark.parametrize("value", ["", "x", "8(4)", "8(x)", "0", "2(x0)", "8,", "-1", "8(x2)(x3)"])
def test_malformed_tasks_per_node(value):
    with pytest.raises(SeqvitError, match=r"SLURM_NTASKS_PER_NODE="):
        expand_tasks_per_node(value, "SLURM_NTASKS_PER_NODE")


def test_torchrun_environment():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node7",
        "MASTER_PORT": "29600",
        "SLURM_JOB_NODELIST": "other[1-4]",
    }
    assert groups.launcher_env(env) == {
        "rank": 5,
        "world_size": 16,
        "local_rank": 1,
        "local_world_size": 4,
        "master_addr": "node7",
        "master_port": 29600,
    }
    # hand-set: local values default to the global ones; one process needs no address
    assert groups.launcher_env({"RANK": "0", "WORLD_SIZE": "1"}) == {
        "rank": 0,
        "world_size": 1,
        "local_rank": 0,
        "local_world_size": 1,
        "master_addr": None,
        "master_port": 29500,  # torchrun's default (PyTorch's torchrun documentation)
    }
    assert groups.launcher_env({"RANK": "1", "WORLD_SIZE": "2"})["master_addr"] == "127.0.0.1"
    # torchrun wins over the srun variables around it (torchrun started by srun, one per node)
    nested = {**env, "SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}
    assert groups.launcher_env(nested)["rank"] == 5


def _srun(procid, ntasks, localid, nodeid, **extra):
    return {
        "SLURM_PROCID": str(procid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(nodeid),
        "SLURM_JOB_ID": "4242",
        **extra,
    }


def test_srun_on_four_frontier_nodes():
    base = {"SLURM_JOB_NODELIST": "frontier[00007-00008,00100-00101]", "SLURM_TASKS_PER_NODE": "8(x4)"}
    for rank in (0, 9, 31):
        info = groups.launcher_env(_srun(rank, 32, rank % 8, rank // 8, **base))
        assert info == {
            "rank": rank,
            "world_size": 32,
            "local_rank": rank % 8,
            "local_world_size": 8,
            "master_addr": "frontier00007",
            "master_port": 20000 + 4242 % 40000,
        }


def test_srun_uneven_tasks_per_node():
    # 7 tasks over 4 nodes, block distribution: 2, 2, 2, 1
    base = {"SLURM_JOB_NODELIST": "rack[1-2]-node[01-02]", "SLURM_TASKS_PER_NODE": "2(x3),1"}
    assert groups.launcher_env(_srun(6, 7, 0, 3, **base))["local_world_size"] == 1
    info = groups.launcher_env(_srun(3, 7, 1, 1, **base))
    assert (info["local_rank"], info["local_world_size"], info["master_addr"]) == (1, 2, "rack1-node01")


def test_srun_prefers_the_step_layout():
    # a 4-task step on 2 nodes of a job asked for 8 per node on 4 nodes
    step = {"SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_NODELIST": "n[3-4]"}
    env = _srun(3, 4, 1, 1, SLURM_NTASKS_PER_NODE="8", SLURM_JOB_NODELIST="n[1-4]", **step)
    info = groups.launcher_env(env)
    assert (info["local_world_size"], info["master_addr"]) == (2, "n3")
    # SLURM_NODELIST when the job's list is missing; MASTER_ADDR from the environment beats both
    assert groups.launcher_env(_srun(1, 2, 1, 0, SLURM_NODELIST="b[2-3],a1"))["master_addr"] == "b2"
    assert groups.launcher_env(_srun(1, 2, 1, 0, SLURM_JOB_NODELIST="n[1-2]", MASTER_ADDR="m"))["master_addr"] == "m"
    # nothing on tasks per node: the whole world may be on this node
    assert groups.launcher_env(_srun(1, 2, 1, 0))["local_world_size"] == 2


def test_srun_needs_no_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "")  # scontrol cannot be found
    env = _srun(0, 16, 0, 0, SLURM_JOB_NODELIST="frontier[09000-09001]", SLURM_NTASKS_PER_NODE="8")
    assert groups.launcher_env(env)["master_addr"] == "frontier09000"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, r"RANK='x' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "2.0"}, r"WORLD_SIZE='2.0' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, r"WORLD_SIZE='0' must be at least 1"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK='-1' must be at least 0"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, r"RANK=4 is not below WORLD_SIZE=4"),
        (
            {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
            r"LOCAL_RANK=2 is not below the 2 processes on this node \(LOCAL_WORLD_SIZE='2'\)",
        ),
        ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "8"}, r"LOCAL_WORLD_SIZE='8' gives 8 processes"),
        ({"RANK": "1", "WORLD_SIZE": "4", "MASTER_PORT": "http"}, r"MASTER_PORT='http' is not an integer"),
        ({"RANK": "1", "WORLD_SIZE": "4", "MASTER_PORT": "70000"}, r"MASTER_PORT='70000' must be in 1..65535"),
        (_srun(8, 8, 0, 0), r"SLURM_PROCID=8 is not below SLURM_NTASKS=8"),
        (_srun(1, 8, "one", 0), r"SLURM_LOCALID='one' is not an integer"),
        (
            _srun(1, 8, 4, 0, SLURM_TASKS_PER_NODE="4(x2)"),
            r"SLURM_LOCALID=4 is not below the 4 processes on this node \(SLURM_TASKS_PER_NODE='4\(x2\)'\)",
        ),
        (_srun(1, 8, 1, 2, SLURM_TASKS_PER_NODE="4(x2)"), r"SLURM_NODEID=2 is past the 2 nodes"),
        (_srun(1, 8, 1, "a", SLURM_TASKS_PER_NODE="4(x2)"), r"SLURM_NODEID='a' is not an integer"),
        (_srun(1, 8, 1, 0, SLURM_NTASKS_PER_NODE="four"), r"SLURM_NTASKS_PER_NODE='four'"),
        ({**_srun(1, 8, 1, 0), "SLURM_JOB_ID": "j1"}, r"SLURM_JOB_ID='j1' is not an integer"),
        (_srun(1, 8, 1, 0, SLURM_JOB_NODELIST="frontier[00001-00002"), r"SLURM_JOB_NODELIST='frontier\[00001-00002'"),
        (
            _srun(1, 8, 1, 0, SLURM_STEP_NODELIST="n[2-1]", SLURM_JOB_NODELIST="n[1-2]"),
            r"SLURM_STEP_NODELIST='n\[2-1\]'",
        ),
    ],
)
def test_inconsistent_launcher_environment_names_the_variable(env, message):
    with pytest.raises(SeqvitError, match=message):
        groups.launcher_env(env)
