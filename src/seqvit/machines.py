"""Machine files (config/machines/NAME.yaml) by name: where they are found, and a device's data-sheet peaks.

The planner (seqvit.plan.machine) reads the whole file; training reads only the peak FLOP/s of
its GPU for MFU. Kept apart from the planner so that a new prediction changes no training code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from seqvit.errors import SeqvitError

# Where machine files are found by name: the folder in SEQVIT_MACHINES (the workflow sets its own
# checkout's config/machines), then config/machines of the working folder (a checkout).
MACHINES_ENV = "SEQVIT_MACHINES"


def _machine_dirs() -> list[Path]:
    dirs = [Path(os.environ[MACHINES_ENV])] if os.environ.get(MACHINES_ENV) else []
    return dirs + [Path("config") / "machines"]


def machine_path(name: str) -> Path:
    """The machine file of NAME (config/machines/NAME.yaml), or NAME itself when it is a YAML file."""
    given = Path(name)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    folders = _machine_dirs()
    for folder in folders:
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})
    raise SeqvitError(
        f"unknown machine {name!r} (config key machine or --machine); use one of {', '.join(known) or '(none found)'} "
        f"in {', '.join(str(f) for f in folders)}, the path of a machine file like config/machines/frontier.yaml, "
        f"or run from the checkout (or set {MACHINES_ENV} to its config/machines)"
    )


def device_peaks(device_name: str) -> tuple[dict[str, float], str] | None:
    """Peak dense TFLOP/s per precision of the device torch names `device_name`, from the machine
    file whose device_names pattern matches it, with a description of the source; None if none does."""
    for folder in _machine_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise SeqvitError(f"{path}: not valid YAML: {exc}") from exc
            pattern = data.get("device_names")
            if pattern and re.search(str(pattern), device_name):
                peaks = {str(k): float(v) for k, v in (data.get("peak_tflops") or {}).items()}
                return peaks, f"{path} ({data.get('description', data.get('name', path.stem))})"
    return None
