import numpy as np
import pytest

from seqvit.data.grids import lat_bounds, latitude_weights, lon_bounds, named_grid
from seqvit.errors import SeqvitError


@pytest.mark.parametrize(
    "name, shape",
    [
        ("5.625deg", (32, 64)),
        ("2.8125deg", (64, 128)),
        ("1.40625deg", (128, 256)),
        ("1deg", (181, 360)),
        ("0.25deg", (721, 1440)),
    ],
)
def test_named_grids(name, shape):
    grid = named_grid(name)
    assert grid.shape == shape
    assert np.all(np.diff(grid.lat) > 0) and grid.lon[0] == 0
    assert lat_bounds(grid.lat)[0] == -90 and lat_bounds(grid.lat)[-1] == 90


def test_weatherbench_centres():
    grid = named_grid("5.625deg")
    assert grid.lat[0] == pytest.approx(-87.1875) and grid.lon[-1] == pytest.approx(354.375)


@pytest.mark.parametrize("name", ["5.625deg", "1deg"])
def test_latitude_weights_are_cell_areas_with_mean_one(name):
    lat = named_grid(name).lat
    w = latitude_weights(lat)
    assert w.mean() == pytest.approx(1.0, rel=1e-12)
    # proportional to the exact cell areas on the sphere
    edges = np.deg2rad(lat_bounds(lat))
    area = np.sin(edges[1:]) - np.sin(edges[:-1])
    np.testing.assert_allclose(w / w.sum(), area / area.sum(), rtol=1e-12)
    np.testing.assert_allclose(w, w[::-1], rtol=1e-12)  # symmetric about the equator


def test_lon_bounds_periodic():
    edges = lon_bounds(named_grid("5.625deg").lon)
    assert edges[0] == pytest.approx(-2.8125) and edges[-1] == pytest.approx(357.1875)


def test_unknown_grid_lists_choices():
    with pytest.raises(SeqvitError, match="5.625deg"):
        named_grid("3deg")
