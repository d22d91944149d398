"""The safety table's verdict: each recipe against labels alone, cell by cell."""

from __future__ import annotations

import pytest

from experiments.proxy_benchmark import safety_verdict

pytestmark = pytest.mark.unit


def _runs(*top1: float) -> list[dict]:
    return [{"counts": {"8": v}} for v in top1]


def _rows(table: dict[str, list[dict]], labels: int) -> dict[str, list[str]]:
    """teacher -> the row's cells after it: default gap, holds, previous default's gap, seeds' gap, the
    smoothed-fade candidate's gap and whether it holds."""
    out = {}
    for line in safety_verdict(lambda name: table.get(name, [])).splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == str(labels):
            out[cells[1]] = cells[2:]
    return out


def test_a_default_below_vanilla_by_more_than_the_spread_fails_and_one_within_it_passes():
    table = {
        "40 per class, vanilla": _runs(0.50, 0.52),
        "40 per class, temporal head, default": _runs(0.505, 0.515),  # -0.000: within
        "40 per class, random-weight teacher, default": _runs(0.40, 0.42),  # -0.100: outside a 0.010 spread
        "40 per class, random-weight teacher, seeds' recipe": _runs(0.14),
        "40 per class, random-weight teacher, previous default (task 0.1)": _runs(0.51, 0.52),
        "40 per class, random-weight teacher, default, fade over 5 validations": _runs(0.50, 0.51),  # -0.005: within
    }
    rows = _rows(table, 40)
    assert set(rows) == {"temporal head", "random-weight teacher"}  # the linear head has no runs: no row
    assert rows["temporal head"][1] == "yes" and rows["temporal head"][2:] == ["-", "-", "-", "-"]
    default, holds, previous, seeds, candidate, candidate_holds = rows["random-weight teacher"]
    assert default.startswith("-0.100") and holds == "**no**"
    assert previous.startswith("+0.005")  # not barred: no verdict
    assert seeds.startswith("-0.370")
    assert candidate.startswith("-0.005") and candidate_holds == "yes"  # barred too: its own verdict


def test_the_bar_is_the_larger_of_the_two_spreads():
    table = {
        "160 per class, vanilla": _runs(0.90, 0.91),  # spread 0.005
        "160 per class, temporal head, default": _runs(0.88, 0.91),  # -0.010, spread 0.015
        "160 per class, linear head, default": _runs(0.895, 0.896),  # -0.0095, spread 0.0005
    }
    rows = _rows(table, 160)
    assert rows["temporal head"][0].endswith("spread 0.015)") and rows["temporal head"][1] == "yes"  # not vanilla's 0.005
    assert rows["linear head"][0].endswith("spread 0.005)") and rows["linear head"][1] == "**no**"
