"""Process trees of a run, for tests that signal every process of it, as Slurm does with a job step."""

from pathlib import Path


def descendants(parent: int) -> list[int]:
    """Every process below `parent` (children of all its threads, recursively)."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found
