import pytest
import yaml

from seqvit.config import load_config, load_configs
from seqvit.errors import SeqvitError
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_valid():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["grid"] == "5.625deg"


def test_overrides_parse_yaml_values():
    cfg = load_config(ROOT / "config" / "config.yaml", ["train.steps=7", "tokenize.patch_sizes=[2, 8]"])
    assert cfg["train"]["steps"] == 7
    assert cfg["tokenize"]["patch_sizes"] == [2, 8]


def test_bad_override_names_the_problem():
    with pytest.raises(SeqvitError, match="nosuch"):
        load_config(ROOT / "config" / "config.yaml", ["nosuch.key=1"])
    with pytest.raises(SeqvitError, match="dotted.key=value"):
        load_config(ROOT / "config" / "config.yaml", ["train.steps"])


def test_schema_error_names_the_key(tmp_path, demo_cfg):
    demo_cfg["train"]["batch_size"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(demo_cfg))
    with pytest.raises(SeqvitError, match=r"bad.yaml: config key train.batch_size"):
        load_config(path)


def test_later_files_win_and_merge_deeply(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  steps: 3\n")
    cfg = load_configs([ROOT / "config" / "config.yaml", extra])
    assert cfg["train"]["steps"] == 3
    assert cfg["train"]["batch_size"] == 16  # untouched keys of the section survive


def test_missing_file_says_so(tmp_path):
    with pytest.raises(SeqvitError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_snakemake_config_overrides_round_trip(demo_cfg):
    from seqvit.config import apply_overrides, flatten_overrides

    overrides = {"train": {"steps": 5, "lead_hours": [6, 24]}, "grid": "1deg"}
    cfg = apply_overrides(demo_cfg, flatten_overrides(overrides))
    assert cfg["train"]["steps"] == 5 and cfg["train"]["lead_hours"] == [6, 24] and cfg["grid"] == "1deg"


def test_command_line_overrides_leave_out_what_the_files_say(tmp_path):
    from seqvit.config import command_line_overrides

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 3\n  lr: 0.1\ngrid: 5.625deg\n")
    # Snakemake's overwrite_config: the file's contents plus one real --config override
    overwrite = {"train": {"steps": 3, "lr": 0.2}, "grid": "5.625deg", "experiment": "x"}
    assert command_line_overrides(overwrite, [path]) == {"train": {"lr": 0.2}, "experiment": "x"}
