"""Process trees of a run, for tests that signal every process of it, as Slurm does with a job step."""

from pathlib import Path


def descendants(parent: int) -> list[int]:
    """Every process below `parent` (children of all its threads, recursively)."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time in clock ticks): tells a process from a later one given the same pid; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *fields = stat[stat.rindex(")") + 2 :].split()
    return None if state in ("Z", "X") else (pid, int(fields[18]))


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def still_running(identities) -> list[int]:
    """The pids of `identities` (from identity()) whose process still runs."""
    return [ident[0] for ident in identities if ident is not None and identity(ident[0]) == ident]
