import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_cfg():
    """The demo configuration as a fresh dict (tests override what they need)."""
    return copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
