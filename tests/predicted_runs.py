"""Predictions in one torchrun world: `python -m torch.distributed.run --nproc-per-node W tests/predicted_runs.py SPEC.json`.

SPEC = {"run", "tokens", "stats", "predictions": [{"cfg", "out", "sp"}]}, predicted one after the
other. The world's process group is made here once, by seqvit's groups.init_distributed for the CPU
(a group made and ended per prediction would meet the previous one's addresses in the store);
each prediction builds its sequence-parallel groups over it, as `seqvit predict` does over its own.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from seqvit.parallel import groups
from seqvit.train.predict import predict


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    groups.init_distributed(1, "cpu")
    try:
        for item in spec["predictions"]:
            predict(item["cfg"], spec["run"], spec["tokens"], spec["stats"], item["out"], sp=item["sp"])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
