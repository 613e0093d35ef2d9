"""Every stage refuses an input made with other settings, naming the file, the keys and the fix."""

import copy
import json

import netCDF4
import numpy as np
import pytest
import yaml

from conftest import stamp_lineage
from seqvit import lineage
from seqvit.cli import main
from seqvit.data.tokenize import store_identity, tokenize
from seqvit.errors import SeqvitError
from seqvit.train.predict import check_trained_on
from test_tokenize import CFG as TOKENS_CFG
from test_tokenize import _noise_fields


def write_raw(path, made_by=None):
    """A one-step raw file in the CDS layout, with or without a lineage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("valid_time", 1)
        nc.createDimension("latitude", 5)
        nc.createDimension("longitude", 8)
        nc.createVariable("valid_time", "i8", ("valid_time",))[:] = [0]
        nc["valid_time"].units = "seconds since 2018-01-01"
        nc.createVariable("latitude", "f8", ("latitude",))[:] = np.linspace(90, -90, 5)
        nc.createVariable("longitude", "f8", ("longitude",))[:] = np.arange(8) * 45.0
        nc.createVariable("t2m", "f4", ("valid_time", "latitude", "longitude"))[:] = 280.0
        if made_by is not None:
            nc.setncattr(lineage.ATTR, lineage.dumps(made_by))
    return path


def era5_config(demo_cfg, tmp_path):
    cfg = copy.deepcopy(demo_cfg)
    cfg["source"] = {"kind": "cds"}
    cfg["results"] = str(tmp_path / "shared")
    path = tmp_path / "era5.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_regrid_refuses_synthetic_raw_files_for_an_era5_config(demo_cfg, tmp_path, capsys):
    """The demo's files in a folder an ERA5 config then uses are never taken for ERA5."""
    raw = write_raw(tmp_path / "shared" / "raw" / "single-levels" / "2018" / "01.nc", lineage.raw(demo_cfg))
    out = tmp_path / "shared" / "regridded" / "single-levels" / "2018.nc"
    assert main(["regrid", "--config", str(era5_config(demo_cfg, tmp_path)), str(raw), str(out)]) == 2
    err = capsys.readouterr().err
    assert str(raw) in err and 'source.kind: "synthetic" in the file, "cds" in the config' in err
    assert "results folder of its own (config key results)" in err
    assert not out.exists()


def test_a_file_without_lineage_is_refused(demo_cfg, tmp_path, capsys):
    raw = write_raw(tmp_path / "shared" / "raw" / "single-levels" / "2018" / "01.nc")
    out = tmp_path / "out.nc"
    assert main(["regrid", "--config", str(era5_config(demo_cfg, tmp_path)), str(raw), str(out)]) == 2
    assert "records no lineage" in capsys.readouterr().err and not out.exists()


def test_downloaded_raw_files_carry_their_lineage_in_the_manifest(tmp_path):
    raw = write_raw(tmp_path / "raw" / "single-levels" / "2018" / "01.nc")
    manifest = tmp_path / "raw" / "manifest" / "single-levels" / "2018" / "01.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"lineage": {"source": {"kind": "cds"}}}')
    assert lineage.of_raw(raw) == {"source": {"kind": "cds"}}


def test_tokenize_refuses_statistics_of_other_training_years(tmp_path):
    paths, stats_path = _noise_fields(tmp_path, [2015, 2016])
    other = copy.deepcopy(TOKENS_CFG)
    other["splits"]["train"] = [2016]
    stamp_lineage(stats_path, lineage.stats(other))
    with pytest.raises(
        SeqvitError,
        match=r"stats.nc: this statistics file was made with other settings "
        r"\(train_years: \[2016\] in the file, \[2015\] in the config\)",
    ):
        tokenize(TOKENS_CFG, paths, stats_path, 4, tmp_path / "p4.zarr")
    assert not (tmp_path / "p4.zarr").exists()


def test_a_model_trained_on_another_tokens_store_is_refused(tmp_path):
    paths, stats_path = _noise_fields(tmp_path, [2015, 2016])
    tokenize(TOKENS_CFG, paths, stats_path, 4, tmp_path / "p4.zarr")
    made_by, store_id = store_identity(tmp_path / "p4.zarr")
    assert made_by == lineage.canonical(lineage.tokens(TOKENS_CFG, 4)) and len(store_id) == 32
    saved = {"patch_size": 4, "tokens": {"lineage": made_by, "store_id": store_id}}
    check_trained_on(TOKENS_CFG, tmp_path, tmp_path / "p4.zarr", saved)  # the store it was trained on
    tokenize(TOKENS_CFG, paths, stats_path, 4, tmp_path / "p4.zarr")  # rewritten: equal settings, new store
    with pytest.raises(SeqvitError, match=r"model.pt: trained on another tokens store"):
        check_trained_on(TOKENS_CFG, tmp_path, tmp_path / "p4.zarr", saved)
    other = copy.deepcopy(TOKENS_CFG)
    other["regrid"] = {"method": "bilinear"}
    with pytest.raises(SeqvitError, match=r"p4.zarr: this tokens store was made with other settings \(regrid_method"):
        check_trained_on(other, tmp_path, tmp_path / "p4.zarr", saved)


def test_differences_name_dotted_keys():
    found = {"source": {"kind": "synthetic", "seed": 0}, "grid": "5.625deg"}
    expected = {"source": {"kind": "cds"}, "grid": "5.625deg"}
    assert lineage.differences(found, expected) == [
        'source.kind: "synthetic" in the file, "cds" in the config',
        'source.seed: 0 in the file, "(absent)" in the config',
    ]


def test_settings_equal_to_the_defaults_resume_the_same_checkpoint(tmp_path):
    """train.zero_stage=0 and train.precision=fp32 are the defaults: the settings a checkpoint is
    compared with are the same with and without them."""
    from conftest import ROOT
    from seqvit.config import load_config
    from seqvit.train.checkpoint import Checkpoints

    implicit = load_config(ROOT / "config" / "config.yaml")
    explicit = load_config(ROOT / "config" / "config.yaml", ["train.zero_stage=0", "train.precision=fp32"])
    assert "zero_stage" not in yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["train"]
    assert implicit == explicit
    checkpoints = Checkpoints(tmp_path, rank=0, distributed=False)
    (tmp_path / "checkpoints" / "step00000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step00000001")
    (tmp_path / "checkpoints" / "run.json").write_text(json.dumps({"train": implicit["train"]}))
    checkpoints.check_settings({"train": explicit["train"]})  # no error
    with pytest.raises(SeqvitError, match=r"\(train\.zero_stage: 0 in the file, 2 in the config\)"):
        checkpoints.check_settings({"train": {**explicit["train"], "zero_stage": 2}})
