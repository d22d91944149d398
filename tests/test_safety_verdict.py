"""The safety table's verdict: the default against labels alone, cell by cell."""

from __future__ import annotations

import pytest

from experiments.proxy_benchmark import safety_verdict

pytestmark = pytest.mark.unit


def _runs(*top1: float) -> list[dict]:
    return [{"counts": {"8": v}} for v in top1]


def _verdict(table: dict[str, list[dict]]) -> list[str]:
    return [line for line in safety_verdict(lambda name: table.get(name, [])).splitlines() if line.startswith("| 40")]


def test_a_default_below_vanilla_by_more_than_the_spread_fails_and_one_within_it_passes():
    table = {
        "40 per class, vanilla": _runs(0.50, 0.52),
        "40 per class, temporal head, default": _runs(0.505, 0.515),  # -0.000: within
        "40 per class, random-weight teacher, default": _runs(0.40, 0.42),  # -0.100: outside a 0.010 spread
        "40 per class, random-weight teacher, seeds' recipe": _runs(0.14),
    }
    lines = _verdict(table)
    assert len(lines) == 2  # the linear head has no default runs: no row
    temporal, random = lines
    assert "temporal head" in temporal and temporal.endswith("| yes |")
    assert "random-weight teacher" in random and random.endswith("| **no** |") and "-0.370" in random


def test_the_bar_is_the_larger_of_the_two_spreads():
    table = {
        "160 per class, vanilla": _runs(0.90, 0.91),  # spread 0.005
        "160 per class, temporal head, default": _runs(0.88, 0.91),  # -0.010, spread 0.015
        "160 per class, linear head, default": _runs(0.895, 0.896),  # -0.0095, spread 0.0005
    }
    rows = [line for line in safety_verdict(lambda name: table.get(name, [])).splitlines() if line.startswith("| 160")]
    temporal, linear = rows
    assert temporal.endswith("| 0.015 | yes |")  # within the default's own spread, not vanilla's 0.005
    assert linear.endswith("| 0.005 | **no** |")  # outside vanilla's 0.005
