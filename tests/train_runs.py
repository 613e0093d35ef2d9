"""Several trainings one after another in one torchrun world: `python -m torch.distributed.run
--nproc-per-node W tests/train_runs.py SPEC.json`, SPEC = {"tokens", "patch_size", "runs": [{"cfg", "out"}]}.

The process group is opened once here, so each train() call reuses it (tests save a process
start-up and a rendezvous per run).
"""

import json
import sys

import torch.distributed as dist

from seqvit.train.engine import train


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    dist.init_process_group("gloo")
    try:
        for run in spec["runs"]:
            train(run["cfg"], spec["tokens"], run["out"], int(spec["patch_size"]), progress=False)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
