import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_cfg():
    """The demo configuration as a fresh dict (tests override what they need)."""
    return copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))


def stamp_lineage(paths, made_by: dict) -> None:
    """Record `made_by` (a seqvit.lineage dict) in netCDF files a test wrote by hand, as the stage
    that writes such files would."""
    import netCDF4

    from seqvit import lineage

    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        with netCDF4.Dataset(path, "a") as nc:
            nc.setncattr(lineage.ATTR, lineage.dumps(made_by))
