"""The chaos soak through LAUNCHER=fly (tests/support/fly_soak.py), bounded for `make test`.

`make soak-fly DURATION=600 RATE=20` runs it longer: FLY_SOAK_SECONDS sets how long jobs keep
coming, FLY_SOAK_RATE how many per second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.fly_soak import SoakConfig, run_fly_soak

SECONDS = float(os.environ.get("FLY_SOAK_SECONDS", "15"))
RATE = float(os.environ.get("FLY_SOAK_RATE", "20"))  # jobs per second


@pytest.mark.timeout(SECONDS + 400)
def test_fly_chaos_soak_loses_nothing_duplicates_nothing_and_leaves_nothing(database_url, s3, tmp_path: Path):
    report = run_fly_soak(database_url, s3, tmp_path, SoakConfig(seconds=SECONDS, jobs_per_second=RATE))
    print("\n".join(report.lines()))
    assert sum(report.faults.values()) > 0 and report.rates["create"].calls > 0
    assert report.problems() == []
