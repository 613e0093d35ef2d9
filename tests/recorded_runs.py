"""Trainings in one torchrun world with their collectives or dropout masks recorded:
`python -m torch.distributed.run --nproc-per-node W tests/recorded_runs.py SPEC.json`.

SPEC = {"tokens", "patch_size", "record": "collectives" | "dropout" | "nothing",
        "runs": [{"cfg", "out", "stop_at_step" (optional)}]}

The process group is made by seqvit's own groups.init_distributed for the CPU, so its backend is
the one training on the CPU gets (groups.backend_for). Each rank writes, per run, to
`<out>/rank<r>-<stop_at_step or "end">.pt`: the collectives it called (CollectiveLog) or the
dropout masks it drew (DropoutTape), with its layout's device and the group's backend.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from recorders import CollectiveLog, DevicelessTensors, DropoutTape
from seqvit.parallel import groups
from seqvit.train.engine import train


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    layout = groups.init_distributed(1, "cpu")
    try:
        for run in spec["runs"]:
            out = Path(run["out"])
            if spec["record"] == "collectives":
                with CollectiveLog() as log, DevicelessTensors():
                    train(
                        run["cfg"],
                        spec["tokens"],
                        out,
                        int(spec["patch_size"]),
                        progress=False,
                        stop_at_step=run.get("stop_at_step"),
                    )
                record = {"calls": log.calls}
            elif spec["record"] == "dropout":
                with DropoutTape() as tape:
                    train(run["cfg"], spec["tokens"], out, int(spec["patch_size"]), progress=False)
                record = {"masks": tape.masks}
            else:
                train(run["cfg"], spec["tokens"], out, int(spec["patch_size"]), progress=False)
                record = {}
            record.update(device=str(layout.device), backend=dist.get_backend_config())
            torch.save(record, out / f"rank{layout.rank}-{run.get('stop_at_step') or 'end'}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
