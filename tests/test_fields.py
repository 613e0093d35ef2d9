import numpy as np
import pandas as pd
import pytest
import xarray as xr

from seqvit.data.fields import channel_names, init_times, split_times, stack_channels
from seqvit.errors import SeqvitError


def canonical(steps=3):
    time = pd.date_range("2016-12-31T18", periods=steps, freq="6h")
    lat, lon = np.array([-45.0, 45.0]), np.array([0.0, 180.0])
    rng = np.random.default_rng(1)
    return xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), rng.normal(size=(steps, 2, 2))),
            "t": (("time", "level", "latitude", "longitude"), rng.normal(size=(steps, 2, 2, 2))),
        },
        coords={"time": time, "level": [500, 850], "latitude": lat, "longitude": lon},
    )


def test_channel_names_follow_weatherbench(demo_cfg):
    names = channel_names(demo_cfg)
    assert names[:3] == ["t2m", "t_500", "t_850"] and "v_850" in names and len(names) == 9


def test_stack_channels_selects_levels():
    ds = canonical()
    da = stack_channels(ds, ["t2m", "t_850"])
    assert da.dims == ("time", "channel", "latitude", "longitude") and da.dtype == np.float32
    np.testing.assert_allclose(da.sel(channel="t_850").values, ds["t"].sel(level=850).values, rtol=1e-6)


@pytest.mark.parametrize("bad, message", [("q_850", "variable 'q'"), ("t_700", "level 700"), ("t", "name a level")])
def test_stack_channels_errors(bad, message):
    with pytest.raises(SeqvitError, match=message):
        stack_channels(canonical(), [bad])


def test_split_times_by_year(demo_cfg):
    times = pd.date_range("2016-12-31T18", periods=3, freq="6h")
    demo_cfg["splits"]["train"] = [2016]
    assert list(split_times(times, demo_cfg, "train")) == [True, False, False]


def test_init_times_need_every_lead():
    times = pd.date_range("2018-01-01", periods=8, freq="6h")
    got = init_times(times, [6, 24])
    assert list(pd.DatetimeIndex(got)) == list(times[:4])
