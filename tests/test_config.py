import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from seqvit.config import load_config, load_configs
from seqvit.errors import SeqvitError

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


# The smallest config the schema accepts: every optional key left to its default.
MINIMAL = {
    "experiment": "minimal",
    "source": {"kind": "synthetic"},
    "data": {"years": [2015, 2016, 2017], "hours": [0, 12], "levels": [500]},
    "splits": {"train": [2015], "val": [2016], "test": [2017]},
    "grid": "5.625deg",
    "tokenize": {"patch_sizes": [4]},
    "model": {"embed_dim": 16, "depth": 1, "num_heads": 2},
    "train": {"lead_hours": [12], "batch_size": 2, "steps": 3, "lr": 0.001},
    "evaluate": {"variables": ["t_500"], "lead_hours": [12]},
}
SHIPPED = sorted((ROOT / "config").glob("*.yaml"))


def _minimal_file(tmp_path, cfg=None):
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump(cfg or MINIMAL))
    return path


@pytest.mark.parametrize("name", [p.name for p in SHIPPED] + ["minimal"])
def test_cli_resolves_the_same_config_as_snakemake(name, tmp_path):
    from snakemake.utils import validate as snakemake_validate

    from seqvit.config import SCHEMA

    path = ROOT / "config" / name if name != "minimal" else _minimal_file(tmp_path)
    cli = load_configs([path])
    by_snakemake = yaml.safe_load(path.read_text())
    snakemake_validate(by_snakemake, str(SCHEMA))  # fills in the schema defaults, as the Snakefile does
    assert cli == by_snakemake


def test_schema_defaults_apply_to_a_minimal_config(tmp_path):
    from seqvit.layout import Layout

    cfg = load_configs([_minimal_file(tmp_path)])
    # the defaults the issue lists, which the code's own fallbacks disagreed with
    train = cfg["train"]
    assert (train["weight_decay"], train["warmup_steps"], train["threads"]) == (0.05, 100, 2)
    assert (train["val_every"], train["checkpoint_every"]) == (250, 250)
    assert cfg["evaluate"]["baselines"] == ["climatology", "persistence", "linear"]
    assert Layout(cfg).baseline_names() == ["climatology", "persistence", "linear"]
    assert cfg["evaluate"]["extrapolate_leads"] is False
    # a value given in the file wins over the default
    cfg = load_configs([_minimal_file(tmp_path)], ["train.weight_decay=0.0", "evaluate.baselines=[persistence]"])
    assert cfg["train"]["weight_decay"] == 0.0 and Layout(cfg).baseline_names() == ["persistence"]


def test_schema_ships_inside_the_installed_package(tmp_path):
    """A wheel (what a non-editable install unpacks) holds the schema the CLI validates with."""
    from seqvit.config import SCHEMA

    # Build from a copy: a build in the checkout would leave build/ and egg-info behind.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("seqvit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = yaml.safe_load(archive.read("seqvit/schemas/config.schema.yaml"))
        archive.extractall(tmp_path / "site")
    assert shipped == yaml.safe_load(SCHEMA.read_text())
    # The unpacked wheel, away from the checkout, refuses a misspelt key as the checkout does.
    script = (
        "import seqvit.config as c, sys; print(c.__file__)\n"
        "try:\n    c.load_config(sys.argv[1], ['train.lrr=0.1'])\nexcept Exception as e:\n    print(e)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "config" / "config.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    where, message = proc.stdout.splitlines()[:2]
    assert Path(where).is_relative_to(tmp_path / "site"), proc.stdout + proc.stderr
    assert "config key train.lrr: unknown; did you mean train.lr?" in message


@pytest.mark.parametrize(
    "override, unknown, suggestion",
    [
        ("train.lrr=0.1", "train.lrr", "train.lr"),
        ("model.embed_dimm=32", "model.embed_dimm", "model.embed_dim"),
        ("tokenize.patch_size=[4]", "tokenize.patch_size", "tokenize.patch_sizes"),
        ("regrid.metod=bilinear", "regrid.metod", "regrid.method"),
        ("evaluate.baseline=[linear]", "evaluate.baseline", "evaluate.baselines"),
        ("source.max_paralel=2", "source.max_paralel", "source.max_parallel"),
        ("parallel.spp=2", "parallel.spp", "parallel.sp"),
    ],
)
def test_misspelt_key_is_refused_with_the_closest_valid_key(override, unknown, suggestion):
    with pytest.raises(SeqvitError) as info:
        load_config(ROOT / "config" / "config.yaml", [override])
    assert f"config key {unknown}: unknown; did you mean {suggestion}?" in str(info.value)


def test_misspelt_key_in_a_file_and_on_the_command_line(tmp_path, demo_cfg, capsys):
    from seqvit.cli import main

    demo_cfg["train"]["weight_decy"] = 0.1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(demo_cfg))
    assert main(["paths", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml: config key train.weight_decy: unknown; did you mean train.weight_decay?" in err
    assert "Traceback" not in err
    assert main(["paths", "--config", str(ROOT / "config" / "config.yaml"), "--set", "trian.lr=0.1"]) == 2
    assert "no section 'trian'; did you mean train?" in capsys.readouterr().err
    # nothing close: the valid keys of the section are listed instead
    assert main(["paths", "--config", str(ROOT / "config" / "config.yaml"), "--set", "regrid.xyzzy=1"]) == 2
    assert "config key regrid.xyzzy: unknown; valid keys here: method" in capsys.readouterr().err


@pytest.mark.parametrize(
    "splits, message",
    [
        ({"train": [2015, 2018]}, r"splits\.train and splits\.test: year\(s\) \[2018\] are in both"),
        ({"val": [2018]}, r"splits\.val and splits\.test: year\(s\) \[2018\] are in both"),
        ({"train": [2015, 2016, 2017]}, r"splits\.train and splits\.val: year\(s\) \[2017\] are in both"),
    ],
)
def test_overlapping_splits_are_refused(demo_cfg, splits, message):
    from seqvit.config import validate

    demo_cfg["splits"].update(splits)
    with pytest.raises(SeqvitError, match=message):
        validate(demo_cfg)


def test_climatology_years_must_be_training_or_earlier_years_with_data(demo_cfg):
    from seqvit.config import validate

    demo_cfg["stats"] = {"climatology_years": [2015, 2018]}
    with pytest.raises(SeqvitError, match=r"stats\.climatology_years: year\(s\) \[2018\] are validation or test"):
        validate(demo_cfg)


@pytest.mark.parametrize(
    "key, years",
    [
        ("splits.train", [2014, 2015]),
        ("splits.val", [2017, 2019]),
        ("splits.test", [2020]),
        ("stats.climatology_years", [2013]),
    ],
)
def test_years_outside_data_years_are_refused(demo_cfg, key, years):
    from seqvit.config import validate

    section, name = key.split(".")
    demo_cfg.setdefault(section, {})[name] = years
    outside = [y for y in years if y not in demo_cfg["data"]["years"]]
    with pytest.raises(
        SeqvitError, match=rf"config key {key}: year\(s\) \[{', '.join(map(str, outside))}\] are not in data\.years"
    ):
        validate(demo_cfg)


@pytest.mark.parametrize(
    "hours, leads",
    [
        ([0, 6, 12, 18], [6, 24]),  # the demo
        ([0, 6, 12, 18], [6, 9]),  # 9 h is not a multiple of 6 h
        ([0, 12], [6]),
        ([0], [24, 48]),
        ([0], [12]),
        ([0, 6, 18], [6, 12]),  # uneven: from 18 h, 6 h and 12 h later are stored
        ([0, 1], [5]),  # a multiple of the 1 h gcd, yet no hour has a time 5 h later
        (list(range(24)), [1, 7, 168]),
    ],
)
def test_lead_times_the_data_cannot_give_are_refused(demo_cfg, hours, leads):
    """A config is accepted exactly when the loader finds initialization times for its leads."""
    import pandas as pd

    from seqvit.config import validate
    from seqvit.data.fields import init_times

    demo_cfg["data"]["hours"] = hours
    demo_cfg["train"]["lead_hours"] = demo_cfg["evaluate"]["lead_hours"] = leads
    days = pd.date_range("2015-01-01", periods=20, freq="D")
    times = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in hours])
    loader_has_samples = len(init_times(times, leads)) > 0
    if loader_has_samples:
        validate(demo_cfg)
    else:
        with pytest.raises(SeqvitError, match=r"config key train\.lead_hours: .*data\.hours") as info:
            validate(demo_cfg)
        assert "evaluate.lead_hours" in str(info.value)


def test_evaluation_leads_must_be_trained_unless_extrapolation_is_asked_for(demo_cfg):
    from seqvit.config import validate

    demo_cfg["evaluate"]["lead_hours"] = [6, 24, 48]
    with pytest.raises(
        SeqvitError, match=r"evaluate\.lead_hours: \[48\] h are not in train\.lead_hours \[6, 24\].*extrapolate_leads"
    ):
        validate(demo_cfg)
    demo_cfg["evaluate"]["extrapolate_leads"] = True
    validate(demo_cfg)


@pytest.mark.parametrize("results", ["my results", "res;ults", "res$ults"])
def test_results_path_the_shell_would_split_is_refused(tmp_path, capsys, results):
    from seqvit.cli import main

    assert (
        main(["paths", "--config", str(ROOT / "config" / "config.yaml"), "--set", f"results={tmp_path / results}"]) == 2
    )
    err = capsys.readouterr().err
    assert "config key results" in err and "without spaces or shell characters" in err


def test_every_problem_is_reported_at_once(demo_cfg):
    from seqvit.config import validate

    demo_cfg["splits"]["val"] = [2018]
    demo_cfg["train"]["lead_hours"] = [6, 9]
    demo_cfg["results"] = "a b"
    with pytest.raises(SeqvitError) as info:
        validate(demo_cfg, source="c.yaml")
    lines = str(info.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "config keys splits.val and splits.test",
        "config key train.lead_hours",
        "config key evaluate.lead_hours",  # 24 h is no longer a training lead
        "config key results 'a b'",
    ]
    assert all(line.startswith("c.yaml: ") for line in lines)


def test_nested_set_creates_sections_the_schema_allows(demo_cfg, tmp_path):
    from seqvit.config import apply_overrides

    assert "retry" not in demo_cfg["source"]
    cfg = apply_overrides(demo_cfg, ["source.retry.client_sleep_max=1", "stats.climatology_years=[2015]"])
    assert cfg["source"]["retry"] == {"client_sleep_max": 1} and cfg["stats"]["climatology_years"] == [2015]
    with pytest.raises(SeqvitError, match=r"config has no section 'retri'; did you mean source.retry\?"):
        apply_overrides(demo_cfg, ["source.retri.attempts=2"])


def test_a_window_size_that_leaves_partial_windows_is_refused_before_anything_runs():
    with pytest.raises(SeqvitError) as err:
        load_configs([ROOT / "config" / "config.yaml"], ["model.attention_pattern=window", "model.window_size=4"])
    # the demo grid is 32 x 64: patch 16 gives 2 x 4 tokens, where 4 rows do not fit
    assert "model.window_size: 4 does not divide the token grid of 2 x 4 tokens" in str(err.value)
    assert "use one of [1, 2]" in str(err.value) and "patch size 8" not in str(err.value)
    load_configs([ROOT / "config" / "config.yaml"], ["model.attention_pattern=window", "model.window_size=2"])
