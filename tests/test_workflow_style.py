"""The workflow's own code stays formatted and lint-free (snakefmt, snakemake --lint)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_snakefmt_check_is_clean():
    files = [str(ROOT / "Snakefile"), str(ROOT / "workflow")]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_declares_log_benchmark_environment_resources_and_message():
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    parts = re.split(r"^\s*rule (\w+):", text, flags=re.M)
    rules = dict(zip(parts[1::2], parts[2::2]))
    assert {"synth", "download", "regrid", "stats", "tokenize", "train", "predict", "baseline", "evaluate"} <= set(
        rules
    )
    for name, block in rules.items():
        for directive in ("log:", "benchmark:", "conda:", "resources:", "message:"):
            assert f"{directive}\n" in block, f"rule {name} lacks {directive}"
